"""The ground floor: torch-free code that training, serving and scoring all share.

Nothing here imports torch, FastAPI or any other package of the project; everything else may import it.
"""
