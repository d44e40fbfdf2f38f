/* faceflow web page: a thin client of the /v1 API (no build step, no dependencies, works offline).
 *
 * The key lives in sessionStorage only (gone when the tab closes) and goes out as a Bearer header.
 * Every drawing is done on a canvas in the image's own pixels, so the boxes of the API's JSON land
 * exactly where the service found them; the canvas' data-boxes attribute says how many were drawn.
 */
"use strict";

(() => {
  const KEY = "faceflow.key";
  const $ = (id) => document.getElementById(id);

  /* Colours: boxes in one colour that photos rarely contain (the browser tests look for it). */
  const COLOR = {
    box: "#00e5ff", unknown: "#ff9f0a", lm5: "#ffd60a", lm68: "#ff375f",
    axisX: "#ff3b30", axisY: "#34c759", axisZ: "#0a84ff", labelBg: "rgba(0,0,0,0.72)", labelFg: "#ffffff",
  };

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  /** The text of an error answer: the API's `message`, else FastAPI's `detail`, else the status. */
  function errorMessage(res, data) {
    if (data && typeof data.message === "string") return data.message;
    if (data && data.detail !== undefined) {
      return typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    }
    return `${res.status} ${res.statusText || "error"}`;
  }

  /** Call the API; JSON bodies for plain objects, multipart for FormData; throws ApiError. */
  async function api(method, path, body) {
    const headers = {};
    const key = sessionStorage.getItem(KEY);
    if (key) headers.Authorization = `Bearer ${key}`;
    let payload = body;
    if (body !== undefined && !(body instanceof FormData)) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body: payload });
    } catch (exc) {
      throw new ApiError(0, "network", `cannot reach the service (${exc.message})`);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!res.ok) {
      const retry = Number(res.headers.get("Retry-After")) || 0;
      const err = new ApiError(res.status, (data && data.code) || `http_${res.status}`, errorMessage(res, data), retry);
      if (res.status === 401 && key) signedOut(err.message);
      throw err;
    }
    return data;
  }

  const enc = encodeURIComponent;

  /** Show an error in `el`: the API's message (after `prefix`, e.g. the file's name). */
  function showError(el, err, prefix = "") {
    let text = prefix + (err instanceof Error ? err.message : String(err));
    if (err instanceof ApiError && err.retryAfter) text += ` (try again in ${err.retryAfter} s)`;
    el.textContent = text;
    el.hidden = false;
  }

  function clearError(el) {
    el.textContent = "";
    el.hidden = true;
  }

  function imageForm(files, field = "image") {
    const form = new FormData();
    for (const f of files) form.append(field, f, f.name || "frame.jpg");
    return form;
  }

  // ---------------------------------------------------------------- drawing

  /** Axis tips of the head pose (degrees; signs as in faceflow.types), projected orthographically:
   * R = Rz(roll) Ry(-yaw) Rx(-pitch) takes the face's axes (x right, y down, z away) to the camera's. */
  function poseAxes(pose) {
    const r = (d) => (d * Math.PI) / 180;
    const [cy, sy] = [Math.cos(r(-pose.yaw)), Math.sin(r(-pose.yaw))];
    const [cp, sp] = [Math.cos(r(-pose.pitch)), Math.sin(r(-pose.pitch))];
    const [cr, sr] = [Math.cos(r(pose.roll)), Math.sin(r(pose.roll))];
    const rx = (v) => [v[0], cp * v[1] - sp * v[2], sp * v[1] + cp * v[2]];
    const ry = (v) => [cy * v[0] + sy * v[2], v[1], -sy * v[0] + cy * v[2]];
    const rz = (v) => [cr * v[0] - sr * v[1], sr * v[0] + cr * v[1], v[2]];
    const rot = (v) => rz(ry(rx(v)));
    return { x: rot([1, 0, 0]), up: rot([0, -1, 0]), toward: rot([0, 0, -1]) };
  }

  /** A label on a dark pill just above `top` (or just below `bottom` when there is no room above),
   * clear of the box's line so the whole box stays visible. */
  function drawLabel(ctx, text, x, top, bottom, unit) {
    if (!text) return;
    const size = Math.round(13 * unit);
    ctx.font = `600 ${size}px system-ui, sans-serif`;
    const pad = Math.round(3 * unit);
    const w = ctx.measureText(text).width + 2 * pad;
    const h = size + 2 * pad;
    const y = top - h >= 0 ? top - h : Math.min(bottom, ctx.canvas.height - h);
    const left = Math.max(0, Math.min(x, ctx.canvas.width - w));
    ctx.fillStyle = COLOR.labelBg;
    ctx.fillRect(left, y, w, h);
    ctx.fillStyle = COLOR.labelFg;
    ctx.textBaseline = "top";
    ctx.fillText(text, left + pad, y + pad);
  }

  /** Draw one face (coordinates multiplied by `scale`): box, landmarks, pose axes, label. */
  function drawFace(ctx, face, opts) {
    const { unit, scale = 1, color = COLOR.box, label = "" } = opts;
    const [x1, y1, x2, y2] = face.box.map((v) => v * scale);
    ctx.lineWidth = Math.max(2, Math.round(2.5 * unit));
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const dot = (pts, radius, fill) => {
      ctx.fillStyle = fill;
      for (const [x, y] of pts) {
        ctx.beginPath();
        ctx.arc(x * scale, y * scale, radius, 0, 2 * Math.PI);
        ctx.fill();
      }
    };
    const lm5 = face.landmarks5;
    if (face.landmarks68) dot(face.landmarks68, Math.max(1, 1.2 * unit), COLOR.lm68);
    if (lm5) dot(lm5, Math.max(1.5, 2.5 * unit), COLOR.lm5);
    if (face.pose && typeof face.pose.yaw === "number") {
      const [ox, oy] = lm5 ? [lm5[2][0] * scale, lm5[2][1] * scale] : [(x1 + x2) / 2, (y1 + y2) / 2];  // the nose tip
      const len = 0.5 * (x2 - x1);
      const axes = poseAxes(face.pose);
      ctx.lineWidth = Math.max(1.5, 2 * unit);
      for (const [v, c] of [[axes.x, COLOR.axisX], [axes.up, COLOR.axisY], [axes.toward, COLOR.axisZ]]) {
        ctx.strokeStyle = c;
        ctx.beginPath();
        ctx.moveTo(ox, oy);
        ctx.lineTo(ox + len * v[0], oy + len * v[1]);
        ctx.stroke();
      }
    }
    const half = Math.max(2, Math.round(2.5 * unit)) / 2;
    drawLabel(ctx, label, x1 - half, y1 - half, y2 + half, unit);
  }

  /** Paint `source` (a bitmap or video frame) on `canvas` at its own size and the faces over it.
   * Lines and labels are sized in screen pixels: `unit` is how many image pixels one CSS pixel shows. */
  function paint(canvas, source, width, height, faces, styleOf, scale = 1) {
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    canvas.dataset.boxes = String(faces.length);  // also what makes a fresh canvas visible (style.css)
    const shown = canvas.getBoundingClientRect().width;
    const unit = Math.max(1, shown > 0 ? width / shown : Math.max(width, height) / 800);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(source, 0, 0, width, height);
    faces.forEach((face, i) => drawFace(ctx, face, { unit, scale, ...styleOf(face, i) }));
  }

  async function bitmapOf(file) {
    try {
      return await createImageBitmap(file);
    } catch {
      throw new Error(`${file.name || "this file"} is not an image the browser can show`);
    }
  }

  const fmt = (v, digits = 0) => (typeof v === "number" ? v.toFixed(digits) : "–");
  const estimate = (e, digits = 0) => (e && e.value !== undefined ? (typeof e.value === "number" ? fmt(e.value, digits) : e.value) : "–");

  function shortLabel(face, i) {
    const parts = [`${i + 1}`];
    if (face.gender && face.gender.value) parts.push(String(face.gender.value).charAt(0).toUpperCase());
    if (face.age && typeof face.age.value === "number") parts.push(fmt(face.age.value));
    if (face.expression && face.expression.value) parts.push(face.expression.value);
    return parts.join(" · ");
  }

  /** A name (of a subject, a file) as an isolated run: a right-to-left or override character in it
   * cannot reorder the text around it. */
  function bdi(text) {
    const el = document.createElement("bdi");
    el.textContent = text;
    return el;
  }

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  // ---------------------------------------------------------------- drop zones

  /** Make a label+file-input pair accept drops and clicks; `onFiles` gets the array of files. Files that
   * are not images go too: the service's answer says why it refuses one (ignoring it said nothing). */
  function dropZone(zone, input, onFiles) {
    const take = (files) => {
      if (files.length) onFiles([...files]);
    };
    input.addEventListener("change", () => { take(input.files); input.value = ""; });
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      take(e.dataTransfer.files);
    });
  }

  // ---------------------------------------------------------------- sign in

  /** Ask the service who the key is (GET /v1/me) and say it in the header. */
  async function whoAmI() {
    const me = await api("GET", "/v1/me");
    const galleries = me.galleries ? `; galleries ${me.galleries.join(", ")}` : "";
    $("whoami").textContent = `Signed in as ${me.name} (${me.scope}${galleries})`;
    document.body.dataset.scope = me.scope;
  }

  function signedIn() {
    $("signin-form").hidden = true;
    $("signed-in").hidden = false;
    $("tools").hidden = false;
    $("signed-out-note").hidden = true;
    document.body.dataset.auth = "in";
    refreshGalleries();
  }

  function signedOut(message) {
    sessionStorage.removeItem(KEY);
    stopLive();
    $("signin-form").hidden = false;
    $("signed-in").hidden = true;
    $("tools").hidden = true;
    $("signed-out-note").hidden = false;
    document.body.dataset.auth = "out";
    if (message) showError($("signin-error"), message);
  }

  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    clearError($("signin-error"));
    const key = $("api-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    try {
      await whoAmI();
    } catch (err) {
      if (err.status === 401 || err.status === 0) {
        signedOut(err.message);
        return;
      }
      // Another refusal (say a rate limit) does not mean the key is wrong: sign in and show it.
      showError($("signin-error"), err);
    }
    $("api-key").value = "";
    signedIn();
  });

  $("signout").addEventListener("click", () => signedOut(""));

  // ---------------------------------------------------------------- tabs

  const tabs = [...document.querySelectorAll('[role="tab"]')];

  function selectTab(tab) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (tab.id !== "tab-live") stopLive();
    if (tab.id === "tab-gallery") refreshGalleries();
  }

  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      next.focus();
      selectTab(next);
    });
  });

  // ---------------------------------------------------------------- analyze

  let analyzeSeq = 0;

  async function analyze(file) {
    const seq = ++analyzeSeq;
    const err = $("analyze-error");
    clearError(err);
    const canvas = $("analyze-canvas");
    const table = $("analyze-table");
    const stages = [...document.querySelectorAll('input[name="stage"]:checked')].map((c) => c.value);
    const params = new URLSearchParams({ stages: stages.join(",") });
    const detector = $("analyze-detector").value;
    if (detector) params.set("detector", detector);
    $("analyze-status").textContent = `Analysing ${file.name}…`;
    delete canvas.dataset.boxes;  // the last photo's drawing goes; this one's comes with its answer
    canvas.setAttribute("aria-label", `Analysing ${file.name}`);
    table.hidden = true;
    try {
      const data = await api("POST", `/v1/analyze?${params}`, imageForm([file]));
      const bitmap = await bitmapOf(file);
      if (seq !== analyzeSeq) return;
      const faces = data.faces || [];
      paint(canvas, bitmap, bitmap.width, bitmap.height, faces, (f, i) => ({ label: shortLabel(f, i) }));
      canvas.setAttribute("aria-label", `${file.name}: ${faces.length} face${faces.length === 1 ? "" : "s"} marked`);
      const body = table.tBodies[0];
      body.replaceChildren();
      faces.forEach((f, i) => {
        const row = body.insertRow();
        row.dataset.testid = "face-row";
        cell(row, String(i + 1));
        cell(row, fmt(f.score, 2));
        cell(row, f.box.map((v) => Math.round(v)).join(", "));
        cell(row, f.pose ? `${fmt(f.pose.yaw)}° / ${fmt(f.pose.pitch)}° / ${fmt(f.pose.roll)}°` : "–");
        cell(row, estimate(f.age));
        cell(row, estimate(f.gender));
        cell(row, f.expression ? f.expression.value : "–");
        cell(row, f.quality && typeof f.quality.unified === "number" ? fmt(f.quality.unified) : "–");
      });
      table.hidden = faces.length === 0;
      $("analyze-status").textContent =
        `${file.name}: ${data.width ?? bitmap.width}×${data.height ?? bitmap.height}, ${faces.length} face${faces.length === 1 ? "" : "s"}`;
    } catch (exc) {
      if (seq !== analyzeSeq) return;
      $("analyze-status").textContent = "";
      showError(err, exc, `${file.name}: `);
    }
  }

  dropZone($("analyze-drop"), $("analyze-file"), (files) => analyze(files[0]));

  // ---------------------------------------------------------------- verify

  const pair = [null, null];
  const pairDrawn = [0, 0];

  /** Draw a photo of the pair; a later call for the same slot wins even if its image decodes first. */
  async function showPairImage(slot, file, faces) {
    const seq = ++pairDrawn[slot];
    const bitmap = await bitmapOf(file);
    if (seq !== pairDrawn[slot]) return;
    paint($(`verify-canvas${slot + 1}`), bitmap, bitmap.width, bitmap.height, faces, () => ({}));
  }

  for (const slot of [0, 1]) {
    dropZone($(`verify-drop${slot + 1}`), $(`verify-file${slot + 1}`), async (files) => {
      pair[slot] = files[0];
      $("verify-result").textContent = "";
      $("verify-run").disabled = !(pair[0] && pair[1]);
      try {
        await showPairImage(slot, files[0], []);
      } catch (exc) {
        showError($("verify-error"), exc);
      }
    });
  }

  $("verify-run").addEventListener("click", async () => {
    const err = $("verify-error");
    clearError(err);
    const out = $("verify-result");
    out.textContent = "Comparing…";
    delete out.dataset.decision;
    const [first, second] = pair;
    const form = new FormData();
    form.append("image1", first, first.name);
    form.append("image2", second, second.name);
    try {
      const data = await api("POST", "/v1/verify", form);
      if (pair[0] !== first || pair[1] !== second) return;  // a photo changed meanwhile: this answer is stale
      const same = data.decision === true;
      out.dataset.decision = same ? "same" : "different";
      out.textContent = `${same ? "Same person" : "Different people"} — similarity ${fmt(data.similarity, 3)}` +
        ` (threshold ${fmt(data.threshold, 3)}, ${data.model ?? "default model"})`;
      const [f1, f2] = data.faces.map((f) => [f]);  // the face compared in each photo
      const crowded = data.faces.map((f, i) => (f.faces_found > 1 ? `photo ${i + 1} has ${f.faces_found} faces` : ""))
        .filter(Boolean);
      if (crowded.length) out.textContent += `; ${crowded.join(", ")}: the largest was compared`;
      await Promise.all([showPairImage(0, first, f1), showPairImage(1, second, f2)]);
    } catch (exc) {
      out.textContent = "";
      showError(err, exc);
    }
  });

  // ---------------------------------------------------------------- gallery

  const gallery = () => $("gallery-select").value;

  async function refreshGalleries(select) {
    if (document.body.dataset.auth !== "in") return;
    const err = $("gallery-error");
    try {
      const data = await api("GET", "/v1/galleries");
      const names = data.map((g) => g.name);
      const sel = $("gallery-select");
      const keep = select || sel.value;
      sel.replaceChildren(...names.map((n) => new Option(n, n)));
      if (!names.length) sel.append(new Option("none yet", ""));
      if (names.includes(keep)) sel.value = keep;
      if (sel.value !== keep) clearSearch();
      $("gallery-delete").disabled = names.length === 0;
      $("gallery-export").disabled = names.length === 0;
      await refreshGallery();
    } catch (exc) {
      showError(err, exc);
    }
  }

  /** A small Delete button that sends DELETE `path` and refreshes the gallery's lists. */
  function deleteButton(label, testid, path) {
    const del = document.createElement("button");
    del.type = "button";
    del.className = "danger small";
    del.textContent = "Delete";
    del.dataset.testid = testid;
    del.setAttribute("aria-label", label);
    del.addEventListener("click", async () => {
      clearError($("gallery-error"));
      try {
        await api("DELETE", path);
        await refreshGallery();
      } catch (exc) {
        showError($("gallery-error"), exc);
      }
    });
    return del;
  }

  async function refreshGallery() {
    const g = gallery();
    const subjects = $("subject-list");
    const faces = $("face-list");
    if (!g) {
      subjects.replaceChildren();
      faces.replaceChildren();
      return;
    }
    const [s, f] = await Promise.all([
      api("GET", `/v1/galleries/${enc(g)}/subjects`),
      api("GET", `/v1/galleries/${enc(g)}/faces`),
    ]);
    subjects.replaceChildren(...s.map((item) => {
      const li = document.createElement("li");
      const { name, faces: count } = item;
      const text = document.createElement("span");
      text.append(bdi(name), ` (${count} face${count === 1 ? "" : "s"})`);
      li.dataset.subject = name;
      li.dataset.testid = "subject";
      li.append(text, deleteButton(`Delete ${name} and all their faces`, "subject-delete",
        `/v1/galleries/${enc(g)}/subjects/${enc(name)}`));
      return li;
    }));
    faces.replaceChildren(...f.map((item) => {
      const li = document.createElement("li");
      li.dataset.testid = "gallery-face";
      li.dataset.faceId = String(item.id);
      const text = document.createElement("span");
      text.append(bdi(item.subject), ` · face ${item.id}`);
      if (item.upload) text.append(" · ", bdi(item.upload));
      li.append(text, deleteButton(`Delete face ${item.id} of ${item.subject}`, "face-delete",
        `/v1/galleries/${enc(g)}/faces/${enc(item.id)}`));
      return li;
    }));
  }

  /** Forget the last search (its answer was about another gallery). */
  function clearSearch() {
    const canvas = $("search-canvas");
    delete canvas.dataset.boxes;
    delete canvas.dataset.names;
    canvas.setAttribute("aria-label", "No search yet");
    $("search-table").hidden = true;
    $("search-table").tBodies[0].replaceChildren();
    $("search-status").textContent = "";
  }

  $("gallery-select").addEventListener("change", () => {
    clearSearch();
    clearError($("gallery-error"));
    refreshGallery().catch((exc) => showError($("gallery-error"), exc));
  });

  $("gallery-create").addEventListener("submit", async (e) => {
    e.preventDefault();
    const err = $("gallery-error");
    clearError(err);
    const name = $("gallery-name").value.trim();
    try {
      await api("POST", "/v1/galleries", { name });
      $("gallery-name").value = "";
      await refreshGalleries(name);
    } catch (exc) {
      showError(err, exc);
    }
  });

  $("gallery-export").addEventListener("click", async () => {
    const g = gallery();
    if (!g) return;
    clearError($("gallery-error"));
    try {
      const res = await fetch(`/v1/galleries/${enc(g)}/export`, { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` } });
      if (!res.ok) {
        const data = await res.json().catch(() => null);
        throw new ApiError(res.status, data?.code, errorMessage(res, data));
      }
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await res.blob());
      link.download = `${g}.zip`;
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    } catch (exc) {
      showError($("gallery-error"), exc);
    }
  });

  $("gallery-delete").addEventListener("click", async () => {
    const g = gallery();
    if (!g || !window.confirm(`Delete the gallery "${g}" and every face in it?`)) return;
    clearError($("gallery-error"));
    try {
      await api("DELETE", `/v1/galleries/${enc(g)}`);
      await refreshGalleries();
    } catch (exc) {
      showError($("gallery-error"), exc);
    }
  });

  dropZone($("enrol-drop"), $("enrol-file"), async (files) => {
    const err = $("gallery-error");
    clearError(err);
    const g = gallery();
    const subject = $("enrol-subject").value.trim();
    const status = $("enrol-status");
    if (!g) return showError(err, "Create or choose a gallery first.");
    if (!subject) return showError(err, "Type the subject's name before dropping photos.");
    status.textContent = `Enrolling ${files.length} photo${files.length === 1 ? "" : "s"} of ${subject}…`;
    try {
      const data = await api("POST", `/v1/galleries/${enc(g)}/subjects/${enc(subject)}/faces`, imageForm(files));
      const added = data.enrolled.length;
      const failed = data.failed.map((f) => `${f.name}: ${f.reason}`);
      status.textContent = `Enrolled ${added} face${added === 1 ? "" : "s"} of ${data.subject}.`;
      if (failed.length) showError(err, `Not enrolled: ${failed.join("; ")}`);
      await refreshGallery();
    } catch (exc) {
      status.textContent = "";
      showError(err, exc, `Enrolling ${subject}: `);
    }
  });

  dropZone($("search-drop"), $("search-file"), async (files) => {
    const err = $("gallery-error");
    clearError(err);
    const g = gallery();
    if (!g) return showError(err, "Create or choose a gallery first.");
    const file = files[0];
    const status = $("search-status");
    const canvas = $("search-canvas");
    const table = $("search-table");
    clearSearch();
    status.textContent = `Searching ${g} for the faces in ${file.name}…`;
    try {
      const data = await api("POST", `/v1/galleries/${enc(g)}/identify`, imageForm([file]));
      const bitmap = await bitmapOf(file);
      const faces = data.faces || [];
      paint(canvas, bitmap, bitmap.width, bitmap.height, faces, (f, i) => ({
        color: f.subject ? COLOR.box : COLOR.unknown,
        label: `${i + 1} · ${f.subject ?? "unknown"}${typeof f.similarity === "number" ? ` ${f.similarity.toFixed(2)}` : ""}`,
      }));
      canvas.dataset.names = JSON.stringify(faces.map((f) => f.subject ?? null));
      const named = faces.filter((f) => f.subject).map((f) => f.subject);
      canvas.setAttribute("aria-label", `${file.name}: ${faces.length} faces; ${named.length ? named.join(", ") : "no one known"}`);
      const body = table.tBodies[0];
      body.replaceChildren();
      faces.forEach((f, i) => {
        const row = body.insertRow();
        row.dataset.testid = "match-row";
        cell(row, String(i + 1));
        const who = cell(row, f.subject ?? "unknown");
        who.dataset.testid = "match-subject";
        cell(row, fmt(f.similarity, 3));
        const others = f.matches.filter((m) => m.subject !== f.subject);
        const td = cell(row, others.length ? "" : "–");
        others.forEach((m, k) => td.append(k ? ", " : "", bdi(m.subject), ` ${fmt(m.similarity, 2)}`));
      });
      table.hidden = faces.length === 0;
      status.textContent = `${faces.length} face${faces.length === 1 ? "" : "s"}; known: ${named.join(", ") || "none"}`;
    } catch (exc) {
      status.textContent = "";
      showError(err, exc, `${file.name}: `);
    }
  });

  // ---------------------------------------------------------------- live

  const live = { stream: null, raf: 0, session: 0, inFlight: false, lastSent: 0, backoffUntil: 0, faces: [], scale: 1,
                 sent: 0, answered: 0, ms: 0 };
  const grab = document.createElement("canvas");

  function stopLive() {
    live.session += 1;
    if (live.stream) for (const track of live.stream.getTracks()) track.stop();
    live.stream = null;
    cancelAnimationFrame(live.raf);
    $("live-start").disabled = false;
    $("live-stop").disabled = true;
    $("live-canvas").setAttribute("aria-label", "Camera off");
  }

  /** Send the current frame unless a request is in flight or the rate limit says wait. */
  function sendFrame(video, now) {
    const interval = 1000 / Number($("live-rate").value);
    if (live.inFlight || now - live.lastSent < interval || now < live.backoffUntil) return;
    const scale = Math.min(1, 640 / video.videoWidth);
    grab.width = Math.round(video.videoWidth * scale);
    grab.height = Math.round(video.videoHeight * scale);
    grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
    live.inFlight = true;
    live.lastSent = now;
    const session = live.session;  // an answer to an earlier start of the camera is dropped
    const started = performance.now();
    const stages = $("live-landmarks").checked ? "detect,landmarks" : "detect";
    grab.toBlob(async (blob) => {
      try {
        if (!blob || !live.stream) return;
        live.sent += 1;
        const data = await api("POST", `/v1/analyze?stages=${stages}`, imageForm([new File([blob], "frame.jpg", { type: "image/jpeg" })]));
        if (session !== live.session) return;
        live.faces = data.faces || [];
        live.scale = 1 / scale;
        live.answered += 1;
        live.ms = performance.now() - started;
        clearError($("live-error"));
      } catch (exc) {
        if (session !== live.session) return;
        showError($("live-error"), exc);
        live.backoffUntil = performance.now() + 1000 * (exc.retryAfter || 1);
      } finally {
        live.inFlight = false;  // even after a restart: never two frames in flight
      }
    }, "image/jpeg", 0.85);
  }

  function liveLoop(now) {
    const video = $("live-video");
    if (!live.stream) return;
    if (video.videoWidth) {
      const canvas = $("live-canvas");
      paint(canvas, video, video.videoWidth, video.videoHeight, live.faces, () => ({}), live.scale);
      canvas.dataset.answers = String(live.answered);
      canvas.setAttribute("aria-label", `Camera: ${live.faces.length} face${live.faces.length === 1 ? "" : "s"}`);
      $("live-stats").textContent =
        `${live.faces.length} face${live.faces.length === 1 ? "" : "s"} · ${live.answered}/${live.sent} frames answered · ${Math.round(live.ms)} ms round trip`;
      sendFrame(video, now);
    }
    live.raf = requestAnimationFrame(liveLoop);
  }

  $("live-start").addEventListener("click", async () => {
    clearError($("live-error"));
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError($("live-error"), "This browser gives no camera here (a camera needs https or localhost).");
      return;
    }
    $("live-start").disabled = true;
    const session = live.session;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
    } catch (exc) {
      $("live-start").disabled = false;
      showError($("live-error"), `No camera: ${exc.message || exc.name}`);
      return;
    }
    if (session !== live.session) {  // stopped (tab changed, signed out) while the camera was asked for
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    Object.assign(live, { stream, lastSent: 0, backoffUntil: 0, faces: [], sent: 0, answered: 0, ms: 0 });
    const video = $("live-video");
    video.srcObject = stream;
    await video.play();
    $("live-stop").disabled = false;
    live.raf = requestAnimationFrame(liveLoop);
  });

  $("live-stop").addEventListener("click", stopLive);

  // ---------------------------------------------------------------- start

  if (sessionStorage.getItem(KEY)) {
    signedIn();
    whoAmI().catch(() => {});  // a 401 signs out (see api)
  } else {
    signedOut("");
  }
})();
