// The drawing page. Draw on a canvas, send it as a PNG to POST /predict, show what came back.
//
// The page never crops, scales or normalises the drawing: the server does that, in the one
// preprocessing module the service and the CLI share, so a drawing gets the same answer here
// as when its PNG is uploaded any other way. No build step, no outside resource; the page
// runs under a strict Content-Security-Policy (no inline code or styles, no eval).
"use strict";

(() => {
  const LIVE_MS = 120; // at most one live prediction per this interval while a stroke goes on
  const HEALTH_MS = 2000; // health-check period while the service is unreachable or failing
  const MIN_STEP_PX = 0.75; // pointer moves shorter than this (CSS px) add no point
  const MODEL_KEY = "digits.model"; // localStorage key of the chosen model

  const $ = (id) => document.getElementById(id);
  const pad = $("pad");
  const ctx = pad.getContext("2d", { alpha: false });
  const seen = $("seen");
  const seenCtx = seen.getContext("2d");
  const el = {
    error: $("error"),
    picker: $("model"),
    placeholder: $("placeholder"),
    brush: $("brush"),
    brushValue: $("brush-value"),
    undo: $("undo"),
    clear: $("clear"),
    result: $("result"),
    prediction: $("prediction"),
    confidence: $("confidence"),
    hint: $("hint"),
    bars: $("bars"),
    usedModel: $("used-model"),
    numberMode: $("number-mode"),
    boxes: $("boxes"),
    reading: $("reading"),
    latency: $("latency"),
    announce: $("announce"),
  };

  const EMPTY_HINT = "Draw a digit on the pad and its prediction appears here.";
  const NUMBER_HINT = "Write a number, digits side by side, and it is read here.";

  // --- state ---------------------------------------------------------------------------
  // Points are stored relative to the pad's size (0..1) and widths relative to its width,
  // so a resize or a change of devicePixelRatio redraws the same drawing, only sharper.
  /** @type {{points: {x: number, y: number}[], width: number}[]} */
  const strokes = [];
  let active = null; // {pointerId, stroke, rect} while a stroke is being drawn
  let renderQueued = false;
  let seq = 0; // number of the latest prediction request; older answers are ignored
  let controller = null; // aborts the request in flight when a newer one starts
  let inFlight = false;
  let liveTimer = 0;
  let liveAgain = false; // a live update was due while a request was in flight
  let modelsLoaded = false;
  let healthTimer = 0;
  let healthChecking = false;

  // --- drawing -------------------------------------------------------------------------
  function fitBackingStore() {
    // The backing store has one pixel per device pixel: sharp on high-DPI screens.
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(pad.clientWidth * dpr));
    const h = Math.max(1, Math.round(pad.clientHeight * dpr));
    if (pad.width !== w || pad.height !== h) {
      pad.width = w;
      pad.height = h;
      render();
    }
  }

  function drawStroke(stroke, w, h) {
    const pts = stroke.points;
    const lw = stroke.width * w;
    if (pts.length === 1 || (pts.length === 2 && pts[0].x === pts[1].x && pts[0].y === pts[1].y)) {
      ctx.beginPath();
      ctx.arc(pts[0].x * w, pts[0].y * h, lw / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    // Quadratic smoothing: each recorded point is a control point, the curve passes through
    // the midpoints between them, so corners from sparse pointer events become round.
    ctx.lineWidth = lw;
    ctx.beginPath();
    ctx.moveTo(pts[0].x * w, pts[0].y * h);
    for (let i = 1; i < pts.length - 1; i++) {
      const mx = (pts[i].x + pts[i + 1].x) / 2;
      const my = (pts[i].y + pts[i + 1].y) / 2;
      ctx.quadraticCurveTo(pts[i].x * w, pts[i].y * h, mx * w, my * h);
    }
    const last = pts[pts.length - 1];
    ctx.lineTo(last.x * w, last.y * h);
    ctx.stroke();
  }

  function render() {
    renderQueued = false;
    const w = pad.width;
    const h = pad.height;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, h);
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const stroke of strokes) drawStroke(stroke, w, h);
    const empty = strokes.length === 0;
    el.placeholder.hidden = !empty;
    el.undo.disabled = empty;
    el.clear.disabled = empty;
  }

  function queueRender() {
    if (!renderQueued) {
      renderQueued = true;
      requestAnimationFrame(render);
    }
  }

  function pointFrom(event, rect) {
    return {
      x: Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width)),
      y: Math.min(1, Math.max(0, (event.clientY - rect.top) / rect.height)),
    };
  }

  function onPointerDown(event) {
    if (active || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    const rect = pad.getBoundingClientRect();
    if (rect.width === 0 || rect.height === 0) return;
    pad.setPointerCapture(event.pointerId);
    const stroke = { points: [pointFrom(event, rect)], width: Number(el.brush.value) / rect.width };
    strokes.push(stroke);
    active = { pointerId: event.pointerId, stroke, rect };
    queueRender();
    scheduleLive();
  }

  function onPointerMove(event) {
    if (!active || event.pointerId !== active.pointerId) return;
    event.preventDefault();
    const { stroke, rect } = active;
    // Coalesced events carry the intermediate positions a fast pen or mouse produced.
    const events = typeof event.getCoalescedEvents === "function" ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) {
      const p = pointFrom(e, rect);
      const last = stroke.points[stroke.points.length - 1];
      if (Math.hypot((p.x - last.x) * rect.width, (p.y - last.y) * rect.height) >= MIN_STEP_PX) {
        stroke.points.push(p);
      }
    }
    queueRender();
    scheduleLive();
  }

  function onPointerEnd(event) {
    if (!active || event.pointerId !== active.pointerId) return;
    if (event.type === "pointerup") {
      const p = pointFrom(event, active.rect);
      const pts = active.stroke.points;
      const last = pts[pts.length - 1];
      if (p.x !== last.x || p.y !== last.y) pts.push(p);
    }
    active = null;
    if (pad.hasPointerCapture(event.pointerId)) pad.releasePointerCapture(event.pointerId);
    predictNow(true);
  }

  function undo() {
    if (active || strokes.length === 0) return;
    strokes.pop();
    render();
    predictNow(true);
  }

  function clear() {
    if (active) return;
    strokes.length = 0;
    render();
    predictNow(true);
  }

  function setBrush(value) {
    const min = Number(el.brush.min);
    const max = Number(el.brush.max);
    el.brush.value = String(Math.min(max, Math.max(min, value)));
    el.brushValue.value = el.brush.value;
  }

  // --- prediction ----------------------------------------------------------------------
  function setBusy(busy) {
    el.result.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function scheduleLive() {
    // Throttled, with a trailing call: while a stroke goes on, at most one request per
    // LIVE_MS, and never two at once (the one in flight finishes, then the next goes).
    if (liveTimer) return;
    setBusy(true);
    liveTimer = window.setTimeout(() => {
      liveTimer = 0;
      if (inFlight) liveAgain = true;
      else predictNow(false);
    }, LIVE_MS);
  }

  function padBlob() {
    return new Promise((resolve) => pad.toBlob(resolve, "image/png"));
  }

  /**
   * Send the drawing now, abandoning any older request: only the latest answer is shown.
   * `final` (end of a stroke, undo, clear, model change) also announces the answer to screen readers.
   */
  async function predictNow(final) {
    window.clearTimeout(liveTimer);
    liveTimer = 0;
    liveAgain = false;
    const mine = ++seq;
    if (controller) controller.abort();
    controller = null;
    if (strokes.length === 0) {
      inFlight = false;
      setBusy(false);
      showEmpty(el.numberMode.checked ? NUMBER_HINT : EMPTY_HINT);
      return;
    }
    const abort = new AbortController();
    controller = abort;
    inFlight = true;
    setBusy(true);
    if (renderQueued) render(); // the PNG must hold the very latest point
    const blob = await padBlob();
    if (mine !== seq) return;
    if (!blob) {
      finishRequest();
      setError("This browser could not turn the drawing into a PNG. Try another browser.");
      return;
    }
    const reading = el.numberMode.checked; // a whole number: POST /read cuts it into digits
    const url = new URL(reading ? "/read" : "/predict", window.location.href);
    if (el.picker.value) url.searchParams.set("model", el.picker.value);
    if (!reading) url.searchParams.set("return_input", "true");
    const started = performance.now();
    let response;
    let body = null;
    try {
      response = await fetch(url, {
        method: "POST",
        body: blob,
        headers: { "Content-Type": "image/png" },
        cache: "no-store",
        signal: abort.signal,
      });
      body = await response.json().catch(() => null);
    } catch (err) {
      if (mine !== seq || (err && err.name === "AbortError")) return;
      finishRequest();
      setError("Cannot reach the digits service. Is it running? Retrying…");
      return;
    }
    if (mine !== seq) return; // a newer request was started: its answer is the one to show
    const ms = performance.now() - started;
    finishRequest();
    if (response.ok && body && Array.isArray(body.readings) && body.readings.length) {
      clearError();
      showReading(body, ms, final);
    } else if (response.ok && body && Array.isArray(body.predictions) && body.predictions.length) {
      clearError();
      showResult(body, ms, final);
    } else if (response.status === 422) {
      // The server found no ink (a very faint or tiny mark): not an error, just nothing to read.
      clearError();
      showEmpty("Nothing the model can read yet: keep drawing.");
    } else {
      setError(`The service answered ${response.status}: ${describe(body, response)}`);
    }
    if (liveAgain && strokes.length) predictNow(false);
  }

  function finishRequest() {
    controller = null;
    inFlight = false;
    if (!liveTimer) setBusy(false);
  }

  function describe(body, response) {
    const text = body && (body.detail || body.error);
    if (typeof text === "string" && text) return text;
    return response.statusText || "unexpected answer";
  }

  function buildBars() {
    const items = [];
    for (let d = 0; d < 10; d++) {
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-label", `digit ${d}`);
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", "0");
      bar.setAttribute("aria-valuetext", "0%");
      bar.dataset.digit = String(d);
      const value = document.createElement("span");
      value.className = "bar-value";
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      track.append(fill);
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = String(d);
      bar.append(value, track, label);
      items.push({ el: bar, value, fill });
      el.bars.append(bar);
    }
    return items;
  }
  const bars = buildBars();

  function percent(p) {
    const v = p * 100;
    return v >= 99.95 ? "100%" : `${v.toFixed(1)}%`;
  }

  function setBars(probabilities, best) {
    bars.forEach((bar, d) => {
      const p = probabilities ? Number(probabilities[d]) || 0 : 0;
      const pct = Math.round(p * 1000) / 10;
      bar.fill.style.transform = `scaleY(${Math.max(0, Math.min(1, p))})`;
      bar.value.textContent = probabilities && p >= 0.005 ? `${Math.round(p * 100)}%` : "";
      bar.el.classList.toggle("best", d === best);
      bar.el.setAttribute("aria-valuenow", String(pct));
      bar.el.setAttribute("aria-valuetext", percent(p));
    });
  }

  function drawSeen(input) {
    // The model's input: 28x28 floats, 0..255, white ink on black, drawn one cell per pixel.
    const image = seenCtx.createImageData(28, 28);
    for (let r = 0; r < 28; r++) {
      const row = input && input[r];
      for (let c = 0; c < 28; c++) {
        const v = row ? Math.max(0, Math.min(255, Math.round(Number(row[c]) || 0))) : 0;
        const i = (r * 28 + c) * 4;
        image.data[i] = v;
        image.data[i + 1] = v;
        image.data[i + 2] = v;
        image.data[i + 3] = 255;
      }
    }
    seenCtx.putImageData(image, 0, 0);
  }

  function showResult(body, ms, final) {
    const p = body.predictions[0];
    const label = p.label != null ? String(p.label) : String(p.digit);
    el.prediction.textContent = label;
    el.prediction.classList.toggle("long", label.length > 2);
    el.confidence.textContent = `${percent(Number(p.confidence))} sure`;
    el.hint.hidden = true;
    el.hint.textContent = "";
    setBars(p.probabilities, p.digit);
    drawSeen(p.input);
    el.boxes.replaceChildren();
    el.reading.textContent = label;
    el.usedModel.textContent = body.version ? `${body.model} v${body.version}` : String(body.model);
    el.latency.textContent = `${Math.round(ms)} ms`;
    if (final) el.announce.textContent = `Predicted ${label}, ${percent(Number(p.confidence))} sure.`;
  }

  function showReading(body, ms, final) {
    // A whole number: the text in the big slot, each digit's box and prediction over the pad.
    const r = body.readings[0];
    el.prediction.textContent = r.text;
    el.prediction.classList.toggle("long", r.text.length > 2);
    el.reading.textContent = r.text;
    el.confidence.textContent = `${percent(Number(r.confidence))} sure`;
    el.hint.hidden = true;
    el.hint.textContent = "";
    setBars(null, -1);
    drawSeen(null);
    drawBoxes(r.digits);
    el.usedModel.textContent = body.version ? `${body.model} v${body.version}` : String(body.model);
    el.latency.textContent = `${Math.round(ms)} ms`;
    if (final) el.announce.textContent = `Read ${r.text}, ${percent(Number(r.confidence))} sure.`;
  }

  function drawBoxes(digits) {
    // Boxes come in the PNG's pixels (the backing store's): placed as percentages of the pad.
    el.boxes.replaceChildren();
    for (const d of digits || []) {
      const box = document.createElement("div");
      box.className = "digit-box";
      box.style.left = `${(100 * d.box.x) / pad.width}%`;
      box.style.top = `${(100 * d.box.y) / pad.height}%`;
      box.style.width = `${(100 * d.box.width) / pad.width}%`;
      box.style.height = `${(100 * d.box.height) / pad.height}%`;
      const label = document.createElement("span");
      label.textContent = String(d.digit);
      box.append(label);
      el.boxes.append(box);
    }
  }

  function setNumberMode(on) {
    // The pad's shape changes, so the drawing (stored relative to it) starts afresh.
    if (active) return;
    document.querySelector(".pad-card").classList.toggle("wide", on);
    document.querySelector(".layout").classList.toggle("wide", on);
    el.reading.hidden = !on;
    pad.setAttribute("aria-label", on
      ? "Drawing pad: write a number, digits side by side, with a mouse, a finger or a pen"
      : "Drawing pad: draw one digit from 0 to 9 with a mouse, a finger or a pen");
    strokes.length = 0;
    fitBackingStore();
    render();
    predictNow(true);
  }

  function showEmpty(hint) {
    el.reading.textContent = "";
    el.boxes.replaceChildren();
    el.prediction.textContent = "";
    el.prediction.classList.remove("long");
    el.confidence.textContent = "";
    el.hint.textContent = hint;
    el.hint.hidden = false;
    setBars(null, -1);
    drawSeen(null);
    el.latency.textContent = "–";
  }

  // --- errors and recovery -------------------------------------------------------------
  function setError(message) {
    if (el.error.textContent !== message) el.error.textContent = message;
    el.error.hidden = false;
    document.body.classList.add("failing");
    if (!healthTimer) healthTimer = window.setInterval(checkHealth, HEALTH_MS);
  }

  function clearError() {
    window.clearInterval(healthTimer);
    healthTimer = 0;
    if (el.error.hidden) return;
    el.error.hidden = true;
    el.error.textContent = "";
    document.body.classList.remove("failing");
  }

  async function checkHealth() {
    if (healthChecking) return;
    healthChecking = true;
    try {
      const response = await fetch("/healthz", { cache: "no-store" });
      if (response.ok) {
        if (!modelsLoaded) {
          await loadModels();
          if (!modelsLoaded) return;
        }
        // With a drawing on the pad, its prediction decides: its answer clears the banner or
        // keeps it (a service that is up but failing); without one, being up is enough.
        if (strokes.length && !active) predictNow(true);
        else clearError();
      }
    } catch (err) {
      // Still unreachable: the banner stays and the next tick tries again.
    } finally {
      healthChecking = false;
    }
  }

  // --- models --------------------------------------------------------------------------
  function storedModel() {
    try {
      return window.localStorage.getItem(MODEL_KEY);
    } catch (err) {
      return null; // storage disabled: no remembered choice
    }
  }

  function storeModel(name) {
    try {
      window.localStorage.setItem(MODEL_KEY, name);
    } catch (err) {
      // storage disabled: the choice lasts for this page only
    }
  }

  function optionText(model) {
    const acc = model.metrics && Number(model.metrics.test_accuracy);
    const parts = [model.name];
    if (model.version) parts.push(`v${model.version}`);
    if (acc > 0) parts.push(`· ${(acc * 100).toFixed(2)}%`);
    return parts.join(" ");
  }

  async function loadModels() {
    let body;
    try {
      const response = await fetch("/models", { cache: "no-store" });
      body = await response.json().catch(() => null);
      if (!response.ok || !body || !Array.isArray(body.models)) {
        setError(`The service answered ${response.status} for its model list: ${describe(body, response)}`);
        return;
      }
    } catch (err) {
      setError("Cannot reach the digits service. Is it running? Retrying…");
      return;
    }
    const wanted = el.picker.value || storedModel();
    const names = body.models.map((m) => m.name);
    el.picker.replaceChildren();
    for (const model of body.models) {
      const option = document.createElement("option");
      option.value = model.name;
      option.textContent = optionText(model) + (model.name === body.default_model ? " (default)" : "");
      el.picker.append(option);
    }
    for (const [name, why] of Object.entries(body.failed || {})) {
      const option = document.createElement("option");
      option.value = name;
      option.disabled = true;
      option.textContent = `${name} (failed to load)`;
      option.title = String(why);
      el.picker.append(option);
    }
    if (!names.length) {
      setError("The service has no model loaded. Check its log and its models directory.");
      return;
    }
    el.picker.value = names.includes(wanted) ? wanted : names.includes(body.default_model) ? body.default_model : names[0];
    modelsLoaded = true;
    if (el.usedModel.textContent === "–") el.usedModel.textContent = el.picker.value;
  }

  // --- wiring --------------------------------------------------------------------------
  function isMac() {
    const platform = (navigator.userAgentData && navigator.userAgentData.platform) || navigator.platform || "";
    return /mac|iphone|ipad/i.test(platform);
  }

  function onKeyDown(event) {
    const target = event.target;
    const typing = target instanceof HTMLSelectElement || target instanceof HTMLInputElement;
    const key = event.key;
    if ((event.ctrlKey || event.metaKey) && !event.shiftKey && !event.altKey && key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    } else if (event.ctrlKey || event.metaKey || event.altKey) {
      // leave the browser's own shortcuts alone
    } else if (key === "Escape" || (!typing && (key === "Delete" || key === "Backspace"))) {
      if (strokes.length) event.preventDefault();
      clear();
    } else if (!typing && (key === "[" || key === "]")) {
      setBrush(Number(el.brush.value) + (key === "]" ? 2 : -2));
    }
  }

  function init() {
    const undoKey = isMac() ? "⌘ Z" : "Ctrl Z";
    $("undo-key").textContent = undoKey;
    $("undo-key-tip").textContent = undoKey;
    setBrush(Number(el.brush.value));

    pad.addEventListener("pointerdown", onPointerDown);
    pad.addEventListener("pointermove", onPointerMove);
    pad.addEventListener("pointerup", onPointerEnd);
    pad.addEventListener("pointercancel", onPointerEnd);
    pad.addEventListener("lostpointercapture", onPointerEnd);
    pad.addEventListener("contextmenu", (event) => event.preventDefault());
    el.undo.addEventListener("click", undo);
    el.clear.addEventListener("click", clear);
    el.numberMode.addEventListener("change", () => setNumberMode(el.numberMode.checked));
    el.brush.addEventListener("input", () => setBrush(Number(el.brush.value)));
    el.picker.addEventListener("change", () => {
      storeModel(el.picker.value);
      predictNow(true);
    });
    document.addEventListener("keydown", onKeyDown);

    if (typeof ResizeObserver === "function") new ResizeObserver(fitBackingStore).observe(pad);
    window.addEventListener("resize", fitBackingStore); // also fires when devicePixelRatio changes (zoom)
    fitBackingStore();
    render();
    showEmpty(EMPTY_HINT);
    if (el.numberMode.checked) setNumberMode(true); // a browser may restore the box's state
    loadModels();
  }

  init();
})();
