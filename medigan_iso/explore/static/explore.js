// medigan-iso explore: the pages' behaviour. No inline script (the CSP forbids it); text from the server
// goes into the page through textContent only, never innerHTML.
"use strict";

const csrfMeta = document.querySelector('meta[name="medigan-iso-csrf"]');
const CSRF = csrfMeta ? csrfMeta.content : "";
const CSRF_HEADER = csrfMeta ? csrfMeta.dataset.header : "x-medigan-iso-csrf";

function randomSeed() {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0];
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error + (body.remedy ? "\n-> " + body.remedy : "");
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

function show(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

// --- index -------------------------------------------------------------------------------------------

function initIndex() {
  const rows = Array.from(document.querySelectorAll("#models tbody tr"));
  const q = document.getElementById("q");
  const operator = document.getElementById("operator");
  const facets = Array.from(document.querySelectorAll("select.facet"));
  const count = document.getElementById("count");
  const compare = document.getElementById("compare");
  const searchError = document.getElementById("search-error");
  let matching = null; // null: every row
  let timer = null;

  function apply() {
    let shown = 0;
    for (const row of rows) {
      let ok = matching === null || matching.has(row.dataset.id);
      for (const facet of facets) {
        const want = facet.value;
        if (want && !row.dataset[facet.dataset.facet].split("|").includes(want)) ok = false;
      }
      row.hidden = !ok;
      if (ok) shown += 1;
    }
    count.textContent = shown + " models";
  }

  const rankBy = document.getElementById("rank_by");
  const order = document.getElementById("order");
  const tbody = document.querySelector("#models tbody");

  async function search() {
    const terms = q.value.trim();
    if (!terms && !rankBy.value) {
      matching = null;
      for (const row of rows) {
        row.querySelector("td.rank").textContent = "";
        tbody.appendChild(row); // back to catalogue order
      }
      show(searchError, "");
      apply();
      return;
    }
    const params = { q: terms, operator: operator.value };
    if (rankBy.value) Object.assign(params, { rank_by: rankBy.value, order: order.value });
    const response = await fetch("/api/models?" + new URLSearchParams(params), { credentials: "same-origin" });
    if (!response.ok) {
      show(searchError, await errorText(response));
      return;
    }
    const body = await response.json();
    matching = new Set(body.models.map((m) => m.model_id));
    const byId = new Map(rows.map((row) => [row.dataset.id, row]));
    for (const model of body.models) { // the server's order: catalogue order, or ranked
      const row = byId.get(model.model_id);
      if (!row) continue;
      row.querySelector("td.rank").textContent = model.rank_value === undefined || model.rank_value === null ? "" : String(model.rank_value);
      tbody.appendChild(row);
    }
    show(searchError, "");
    apply();
  }

  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  q.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(search, 250);
  });
  operator.addEventListener("change", search);
  rankBy.addEventListener("change", search);
  order.addEventListener("change", search);
  for (const facet of facets) facet.addEventListener("change", apply);
  const picks = Array.from(document.querySelectorAll("input.pick"));
  function picked() {
    return picks.filter((p) => p.checked).map((p) => p.value);
  }
  for (const pick of picks) {
    pick.addEventListener("change", () => {
      const n = picked().length;
      compare.disabled = n < 2 || n > 4;
    });
  }
  compare.addEventListener("click", () => {
    window.location.href = "/compare?" + new URLSearchParams({ ids: picked().join(",") });
  });
  if (q.value.trim() || rankBy.value) search();
}

// --- model page --------------------------------------------------------------------------------------

function initModel() {
  const live = document.getElementById("live");
  const modelId = live.dataset.modelId;
  const latentSize = parseInt(live.dataset.latentSize, 10) || 0;
  const base = "/api/models/" + encodeURIComponent(modelId);
  const grid = document.getElementById("grid");
  const seed = document.getElementById("seed");
  const n = document.getElementById("n");
  const error = document.getElementById("error");
  const busy = document.getElementById("busy");
  const download = document.getElementById("download");
  const sliders = Array.from(document.querySelectorAll("input.latent"));
  const conds = Array.from(document.querySelectorAll("input.cond"));
  let lastUrl = null;
  let generation = 0;

  function edits() {
    const out = {};
    for (const s of sliders) if (s.dataset.touched === "1") out[s.dataset.index] = parseFloat(s.value);
    return out;
  }

  function conditions() {
    const out = {};
    for (const c of conds) {
      const kind = c.dataset.kind;
      if (kind === "bool") out[c.dataset.key] = c.checked;
      else if (kind === "number") out[c.dataset.key] = c.value === "" ? null : Number(c.value);
      else if (kind === "json") {
        try { out[c.dataset.key] = JSON.parse(c.value); } catch (e) { out[c.dataset.key] = c.value; }
      } else out[c.dataset.key] = c.value === "" ? null : c.value;
    }
    return out;
  }

  function updateDownload() {
    const params = { n: n.value, seed: seed.value };
    const e = edits();
    if (Object.keys(e).length) params.edits = JSON.stringify(e);
    const c = conditions();
    if (Object.keys(c).length) params.conditions = JSON.stringify(c);
    download.href = base + "/samples.zip?" + new URLSearchParams(params);
  }

  async function render() {
    const mine = ++generation;
    updateDownload();
    busy.hidden = false;
    const body = { seed: parseInt(seed.value, 10), n: parseInt(n.value, 10), conditions: conditions() };
    if (latentSize) body.latent_edits = edits();
    let response;
    try {
      response = await fetch(base + "/sample", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", [CSRF_HEADER]: CSRF },
        body: JSON.stringify(body),
      });
    } catch (e) {
      if (mine === generation) { busy.hidden = true; show(error, String(e)); }
      return;
    }
    if (mine !== generation) return; // a newer request was made meanwhile
    busy.hidden = true;
    if (!response.ok) {
      show(error, await errorText(response));
      grid.removeAttribute("src");
      grid.dataset.state = "error";
      return;
    }
    const blob = await response.blob();
    if (lastUrl) URL.revokeObjectURL(lastUrl);
    lastUrl = URL.createObjectURL(blob);
    show(error, "");
    grid.dataset.state = "loading";
    grid.onload = () => { grid.dataset.state = "loaded"; };
    grid.src = lastUrl;
    refreshStatus();
  }

  async function refreshStatus() {
    const response = await fetch(base, { credentials: "same-origin" });
    if (!response.ok) return;
    const status = (await response.json()).status;
    let line = status.state;
    if (status.env) line += ": env " + status.env.key.slice(0, 16) + ", Python " + status.env.python_version + ", " + status.env.builder;
    if (status.runner) line += "; runner sandbox: " + ((status.runner.sandbox_layers || []).join(", ") || "none");
    document.getElementById("env-status").textContent = line;
  }

  seed.value = randomSeed();
  document.getElementById("new-seed").addEventListener("click", () => {
    seed.value = randomSeed();
    render();
  });
  seed.addEventListener("change", render);
  n.addEventListener("change", render);
  for (const s of sliders) {
    const out = s.parentElement.querySelector("output");
    s.addEventListener("input", () => { out.textContent = parseFloat(s.value).toFixed(1); });
    s.addEventListener("change", () => { s.dataset.touched = "1"; render(); });
  }
  const reset = document.getElementById("reset-latent");
  if (reset) {
    reset.addEventListener("click", () => {
      for (const s of sliders) {
        s.dataset.touched = "0";
        s.value = 0;
        s.parentElement.querySelector("output").textContent = "seed";
      }
      render();
    });
  }
  const applyButton = document.getElementById("apply");
  if (applyButton) applyButton.addEventListener("click", render);
  render();
}

// --- compare -----------------------------------------------------------------------------------------

function initCompare() {
  const seed = document.getElementById("seed");
  const n = document.getElementById("n");
  const figures = Array.from(document.querySelectorAll(".compare figure"));

  async function renderOne(figure) {
    const img = figure.querySelector("img");
    const error = figure.querySelector(".error");
    const url = "/api/models/" + encodeURIComponent(figure.dataset.modelId) + "/grid.png?" +
      new URLSearchParams({ n: n.value, seed: seed.value });
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) {
      show(error, await errorText(response));
      img.removeAttribute("src");
      return;
    }
    show(error, "");
    const old = img.src;
    img.src = URL.createObjectURL(await response.blob());
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  }

  function renderAll() {
    for (const figure of figures) renderOne(figure); // in parallel: a slow model holds only its own figure
  }

  seed.value = randomSeed();
  document.getElementById("new-seed").addEventListener("click", () => { seed.value = randomSeed(); renderAll(); });
  seed.addEventListener("change", renderAll);
  n.addEventListener("change", renderAll);
  renderAll();
}

const page = document.body.dataset.page;
if (page === "index") initIndex();
else if (page === "model") initModel();
else if (page === "compare") initCompare();
