// tumorclf serve: send one file's bytes to /api/predict, show the answer; show the model card's numbers.
"use strict";

const $ = (id) => document.getElementById(id);
let about = null;  // GET /api/model
let latest = 0;    // the newest upload: older answers arriving late are ignored

function fmt(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
}

function twoLines(first, second) {
  const cell = el("span", first);
  cell.appendChild(el("span", second, "ci"));
  return cell;
}

function withInterval(metric) {
  const value = metric && typeof metric.value === "number" ? fmt(metric.value) : "—";
  const ci = metric && Array.isArray(metric.ci95) ? metric.ci95 : null;
  return ci ? twoLines(value, `[${fmt(ci[0])}, ${fmt(ci[1])}]`) : value;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function table(head, rows) {
  const t = el("table");
  if (head) {
    const tr = t.createTHead().insertRow();
    head.forEach((h) => tr.appendChild(el("th", h)));
  }
  const body = t.createTBody();
  rows.forEach((row) => {
    const r = body.insertRow();
    row.forEach((cell, i) => {
      const td = r.insertCell();
      if (i) td.className = "num";
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = String(cell);
    });
  });
  return t;
}

function section(parent, title, node) {
  parent.appendChild(el("h3", title));
  parent.appendChild(node);
}

function renderCard(a) {
  const root = $("card");
  root.replaceChildren();
  const op = a.operating_point;
  const applied = [
    ["operating point", op.description || "unnamed (a threshold given, or a model without a run folder or card)"],
    ["temperature", fmt(op.temperature, 4)],
    ["threshold on calibrated P(tumour)", `${fmt(op.threshold, 4)} (from ${op.source})`],
    ["quality gate", a.gate ? `on: too_small under ${a.gate.min_side} px, then blank, not_grayscale_mri, ` +
      "out_of_distribution" : "off: every readable image gets a decision"],
    ["Grad-CAM", a.gradcam.available ? a.gradcam.detail : `unavailable: ${a.gradcam.detail}`],
    ["input", `${a.size}×${a.size} px`],
  ];
  section(root, "Applied on this page", table(null, applied));
  const c = a.card;
  if (!c) {
    root.appendChild(el("p", "No model card beside the model and no run folder: only the numbers above are known.",
      "muted"));
    return;
  }
  root.appendChild(el("p", `From ${a.card_source}.`, "muted"));
  const facts = [["model", c.model], ["weights", c.weights], ["split protocol", c.split],
    ["best epoch", c.best_epoch]].filter(([, v]) => v !== null && v !== undefined);
  if (c.temperature !== null && c.temperature !== undefined) {
    facts.push(["operating point", `temperature ${fmt(c.temperature, 4)}, threshold ${fmt(c.threshold, 4)}` +
      (c.threshold_source ? ` (${c.threshold_source})` : "")]);
  }
  if (c.fitted_on) {
    facts.push(["fitted on", `${c.fitted_on} (n = ${c.fitted_n}), target sensitivity ${fmt(c.target_sensitivity, 2)}`]);
  }
  if (c.gate) {
    const v = c.gate.validation || {};
    facts.push(["quality gate", `min side ${c.gate.min_side} px, OOD threshold ${fmt(c.gate.ood_threshold, 4)} ` +
      `(layer ${c.gate.layer})` + (typeof v.rejection_rate === "number" ?
      `, rejects ${fmt(100 * v.rejection_rate, 1)}% of validation (n = ${v.n})` : "")]);
  }
  section(root, "Model", table(null, facts));
  if (c.evaluations.length) {
    const names = ["accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "ece"]
      .filter((m) => c.evaluations.some((e) => e.metrics[m]));
    section(root, "Evaluations (95% bootstrap intervals)",
      table(["evaluation", "n", ...names.map((m) => m.replace("_", " "))],
        c.evaluations.map((e) => [twoLines(e.name, e.kind), e.n ?? "—",
          ...names.map((m) => withInterval(e.metrics[m]))])));
  }
  const test = Object.entries(c.test_metrics || {});
  if (test.length) {
    section(root, "Test split at the end of training (metrics.json, no intervals)",
      table(test.map(([k]) => k), [test.map(([, v]) => fmt(v))]));
  }
  if (c.intended_use) root.appendChild(el("p", `Intended use: ${c.intended_use}`, "muted"));
}

function setState(state, message = "") {
  document.body.dataset.state = state;
  $("status").textContent = message;
}

function fail(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  setState("error");
}

function show(r) {
  const refused = r.quality !== null && r.quality !== "ok";
  const prob = $("prob");
  prob.textContent = fmt(r.prob_tumor);
  prob.dataset.prob = String(r.prob_tumor);
  prob.title = String(r.prob_tumor);
  prob.classList.toggle("refused", refused);
  $("prob-note").textContent = refused ? "not an answer: the quality gate refused this image"
    : `${fmt(100 * r.prob_tumor, 1)} %`;
  const decision = $("decision");
  decision.textContent = refused ? `Cannot assess: ${r.quality}` : r.predicted;
  decision.className = `decision ${refused ? "refused" : r.predicted}`;
  $("threshold").textContent = fmt(r.threshold, 4);
  $("quality").textContent = r.quality ?? "not gated";
  $("ood").textContent = r.ood_score === null ? "—" : fmt(r.ood_score, 2);
  $("prob-raw").textContent = fmt(r.prob_tumor_raw, 6);
  $("temperature").textContent = fmt(r.temperature, 4);
  $("file-name").textContent = r.file;
  $("file-facts").textContent = `${r.width}×${r.height} px, ${fmt(r.bytes / 1024, 1)} KB` +
    (r.saved_as ? `, kept on the server as ${r.saved_as}` : ", not stored");
  $("seen").src = r.image;
  $("seen-caption").textContent = `The slice ${r.image_note}`;
  const overlay = $("overlay");
  overlay.hidden = !r.overlay;
  if (r.overlay) overlay.src = r.overlay;
  $("overlay-missing").hidden = Boolean(r.overlay);
  $("overlay-missing").textContent = r.overlay ? "" : r.overlay_note;
  $("overlay-caption").textContent = r.overlay ? r.overlay_note : "";
  $("result").hidden = false;
  setState("done", `Scored ${r.file}.`);
}

async function upload(file) {
  const id = ++latest;
  $("error").hidden = true;
  $("result").hidden = true;
  $("prob").removeAttribute("data-prob");
  if (about && file.size > about.max_upload_mb * 1024 * 1024) {
    fail(`${file.name}: file too large: the limit is ${about.max_upload_mb} MB`);
    return;
  }
  setState("busy", `Scoring ${file.name}…`);
  let response, body;
  try {
    response = await fetch("/api/predict", {
      method: "POST", body: file,
      headers: {"Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name)},
    });
    body = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
  } catch (err) {
    body = {error: `upload failed: ${err.message}`};
  }
  if (id !== latest) return;
  if (!response || !response.ok) fail(body.error || "upload failed");
  else show(body);
}

function watchDrops() {
  const drop = $("drop");
  ["dragover", "drop"].forEach((type) => window.addEventListener(type, (e) => e.preventDefault()));
  drop.addEventListener("dragover", () => drop.classList.add("over"));
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";  // choosing the same file again is a new upload
    if (file) upload(file);
  });
}

async function loadModel() {
  let body;
  try {
    const response = await fetch("/api/model");
    body = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  } catch (err) {
    fail(`cannot read the model's description: ${err.message}`);
    $("card").replaceChildren(el("p", "Unknown: the server did not describe the model.", "muted"));
    return;
  }
  about = body;
  $("model-path").textContent = about.model;
  $("limit").textContent = about.max_upload_mb;
  if (about.saves_uploads) {
    $("storage").textContent = "Uploads that are images are kept on the server (--save-uploads).";
  }
  renderCard(about);
}

watchDrops();
loadModel();
