// Offline page: no CDN, no framework. Uploads one image to /v1/predict and /v1/explain.
"use strict";
const $ = (id) => document.getElementById(id);

async function loadModel() {
  const r = await fetch("/v1/model");
  const m = await r.json();
  $("model-info").textContent = `Model ${m.name} (${m.backend}) · classes: ${m.classes.join(", ")} · input ${m.input_shape.width}×${m.input_shape.height}`;
  document.body.dataset.model = m.name;
}

function showError(text) {
  $("status").textContent = text;
  $("status").className = "error";
}

async function classify(file) {
  $("status").className = "";
  $("status").textContent = `Classifying ${file.name}…`;
  $("result").hidden = true;
  document.body.dataset.state = "busy";
  $("preview").src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const r = await fetch("/v1/predict?top_k=5", { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) throw new Error(body.detail || r.statusText);
    const p = body.predictions[0];
    // a multi-label model answers every label at or above its threshold (possibly none)
    $("label").textContent = p.labels
      ? (p.labels.map((l) => `${l.class} (${(100 * l.probability).toFixed(1)}%)`).join(", ") || "no label above its threshold")
      : `${p.class} (${(100 * p.probability).toFixed(1)}%)`;
    $("bars").replaceChildren(...p.top_k.map((t) => {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = t.class;
      name.className = "name";
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${Math.max(1, 100 * t.probability)}%`;
      const pct = document.createElement("span");
      pct.textContent = `${(100 * t.probability).toFixed(1)}%`;
      li.append(name, bar, pct);
      return li;
    }));
    $("result").hidden = false;
    const form2 = new FormData();
    form2.append("file", file, file.name);
    const e = await fetch("/v1/explain?format=png", { method: "POST", body: form2 });
    if (e.ok) {
      const overlay = $("overlay");
      const loaded = new Promise((res, rej) => { overlay.onload = res; overlay.onerror = rej; });
      overlay.src = URL.createObjectURL(await e.blob());
      await loaded;
      $("status").textContent = "Done.";
    } else {
      const detail = (await e.json()).detail;
      $("status").textContent = `Prediction done; no Grad-CAM overlay (${detail}).`;
    }
    document.body.dataset.state = "done";
  } catch (err) {
    showError(`Could not classify ${file.name}: ${err.message}`);
    document.body.dataset.state = "error";
  }
}

const drop = $("drop");
$("file").addEventListener("change", (ev) => { if (ev.target.files.length) classify(ev.target.files[0]); });
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  if (ev.dataTransfer.files.length) classify(ev.dataTransfer.files[0]);
});
loadModel().catch((err) => showError(`Cannot reach the server: ${err.message}`));
