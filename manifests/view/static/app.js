// dpp view: the page. Served by `dpp view` (data from /api/...) or written by `dpp view --export`
// (data in data/corpus-N.js, loaded by <script> tags so the page opens from disk; filtering runs here).
"use strict";

const STATIC = window.DPP_STATIC || null;
const PAGE = 60;
const SCORE_NAMES = {
  label_uncertainty: "uncertainty",
  classifier_confidence: "confidence",
  realism_distance: "realism distance",
  min_fragment_pixels: "min fragment px",
};

// --- where the data comes from ---

async function getJSON(url) {
  const res = await fetch(url);
  const body = await res.json().catch(() => ({ error: `${res.status} ${res.statusText}` }));
  if (!res.ok) throw new Error(body.error || body.detail || `${res.status} ${res.statusText}`);
  return body;
}

const serverApi = {
  corpora: () => getJSON("api/corpora"),
  page: (ci, params) => getJSON(`api/corpora/${ci}/samples?${new URLSearchParams(params)}`),
  detail: (ci, key) => getJSON(`api/corpora/${ci}/samples/${encodeURIComponent(key)}`),
  audit: (ci) => getJSON(`api/corpora/${ci}/audit`),
  image: (ci, key) => `api/corpora/${ci}/samples/${encodeURIComponent(key)}/image.png`,
  mask: (ci, key) => `api/corpora/${ci}/samples/${encodeURIComponent(key)}/mask.png`,
};

// The same filters and sort as manifests/view/index.py:Corpus.select, over the exported rows.
function staticQuery(c, p) {
  let rows = c.rows.filter((r) => {
    if (p.origin && r.origin !== p.origin) return false;
    if (p.generation !== "" && p.generation !== undefined && r.generation !== Number(p.generation)) return false;
    if (p.cls && !r.classes_present.includes(p.cls)) return false;
    const st = p.status || "all";
    if (st === "kept" && !r.kept) return false;
    if (st === "rejected" && r.kept) return false;
    if (st.startsWith("reason:") && r.reason !== st.slice(7)) return false;
    for (const name of Object.keys(c.summary.scores)) {
      const v = r.scores[name];
      const lo = p[`min_${name}`], hi = p[`max_${name}`];
      if (lo !== undefined && lo !== "" && !(v !== null && v >= Number(lo))) return false;
      if (hi !== undefined && hi !== "" && !(v !== null && v <= Number(hi))) return false;
    }
    return true;
  });
  if (p.sort) {
    const sign = p.order === "desc" ? -1 : 1;
    rows = rows
      .map((r, i) => [r, i])
      .sort(([a, i], [b, j]) => {
        const x = a.scores[p.sort], y = b.scores[p.sort];
        if (x === null || y === null) return (x === null) - (y === null) || i - j;
        return sign * (x - y) || i - j;
      })
      .map(([r]) => r);
  }
  const offset = Number(p.offset || 0), limit = Number(p.limit || PAGE);
  return { total: rows.length, offset, limit, items: rows.slice(offset, offset + limit) };
}

const staticApi = {
  corpora: async () => STATIC.map((c) => c.summary),
  page: async (ci, params) => staticQuery(STATIC[ci], params),
  detail: async (ci, key) => STATIC[ci].details[key],
  audit: async (ci) => {
    if (STATIC[ci].audit_error) throw new Error(STATIC[ci].audit_error);
    return STATIC[ci].audit;
  },
  image: (ci, key) => `img/${ci}/${key}.png`,
  mask: (ci, key) => `img/${ci}/${key}.mask.png`,
};

const api = STATIC ? staticApi : serverApi;

// --- small DOM helpers ---

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function rgb(c) {
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  return Number.isInteger(v) ? String(v) : Number(v).toPrecision(4);
}

function select(name, options) {
  const s = el("select", { name });
  for (const [v, label] of options) s.append(el("option", { value: v, text: label }));
  s.value = options[0][0];
  return s;
}

// --- one column per corpus ---

class Column {
  constructor(summary) {
    this.c = summary;
    this.offset = 0;
    this.node = el("section", { class: "column", "data-corpus": summary.index });
    this.build();
  }

  build() {
    const c = this.c;
    this.node.append(el("h2", {}, `${c.name} `, el("small", { text: c.corpus_id })));
    const legend = el("div", { class: "legend" });
    c.classes.forEach((name, i) => {
      legend.append(el("span", {}, el("i", { style: `background:${rgb(c.palette[i])}` }), `${i} ${name}`));
    });
    this.node.append(legend);
    for (const [stem, why] of Object.entries(c.damaged)) {
      this.node.append(el("div", { class: "error damaged", text: `damaged shard ${stem}: ${why}` }));
    }
    const f = el("form", { class: "filters", onsubmit: (e) => e.preventDefault() });
    f.append(el("label", {}, "origin", select("origin", [["", "any"], ...c.origins.map((o) => [o, o])])));
    f.append(
      el("label", {}, "generation", select("generation", [["", "any"], ...c.generations.map((g) => [g, g])])),
    );
    f.append(el("label", {}, "class", select("cls", [["", "any"], ...c.classes.map((n) => [n, n])])));
    const reasons = Object.keys(c.reasons).map((r) => [`reason:${r}`, `rejected: ${r}`]);
    f.append(
      el("label", {}, "status",
        select("status", [["all", "all"], ["kept", "kept"], ["rejected", "rejected"], ...reasons])),
    );
    for (const [name, [lo, hi]] of Object.entries(c.scores)) {
      const label = SCORE_NAMES[name] || name;
      f.append(
        el("label", { title: `${name}: ${fmt(lo)} to ${fmt(hi)}` }, label,
          el("input", { type: "number", step: "any", name: `min_${name}`, placeholder: fmt(lo) }), "–",
          el("input", { type: "number", step: "any", name: `max_${name}`, placeholder: fmt(hi) })),
      );
    }
    const sorts = [["", "manifest order"], ...Object.keys(c.scores).map((n) => [n, SCORE_NAMES[n] || n])];
    f.append(el("label", {}, "sort", select("sort", sorts), select("order", [["asc", "↑"], ["desc", "↓"]])));
    f.addEventListener("change", () => { this.offset = 0; this.load(); });
    this.form = f;
    this.node.append(f);
    this.count = el("span", { class: "count" });
    this.pageinfo = el("span", { class: "pageinfo" });
    const prev = el("button", { class: "prev", type: "button", text: "◀", onclick: () => this.turn(-1) });
    const next = el("button", { class: "next", type: "button", text: "▶", onclick: () => this.turn(1) });
    const charts = el("button", { class: "charts-toggle", type: "button", text: "charts", onclick: () => this.toggleCharts() });
    this.node.append(el("div", { class: "bar" }, this.count, prev, this.pageinfo, next, charts));
    this.charts = el("div", { class: "charts", hidden: true });
    this.error = el("div", { class: "error query-error", hidden: true });
    this.grid = el("div", { class: "grid" });
    this.node.append(this.charts, this.error, this.grid);
  }

  params() {
    const p = {};
    for (const [k, v] of new FormData(this.form).entries()) if (v !== "") p[k] = v;
    if (!p.sort) delete p.order;
    return { ...p, offset: this.offset, limit: PAGE };
  }

  turn(step) {
    const next = this.offset + step * PAGE;
    if (next < 0 || next >= this.total) return;
    this.offset = next;
    this.load();
  }

  async load() {
    let res;
    try {
      res = await api.page(this.c.index, this.params());
      this.error.hidden = true;
    } catch (e) {
      this.error.textContent = e.message;
      this.error.hidden = false;
      return;
    }
    this.total = res.total;
    this.count.textContent = `${res.total} samples`;
    this.count.dataset.total = res.total;
    const last = Math.min(res.offset + res.items.length, res.total);
    this.pageinfo.textContent = res.total ? `${res.offset + 1}–${last}` : "";
    this.grid.replaceChildren(...res.items.map((it) => this.tile(it)));
  }

  tile(it) {
    const ci = this.c.index;
    const stack = el("div", { class: "stack" });
    if (it.damaged) stack.append(el("div", { class: "note", text: `damaged: ${it.damaged}` }));
    else if (!it.stored) stack.append(el("div", { class: "note", text: "image not kept" }));
    else {
      const img = el("img", { class: "img", src: api.image(ci, it.key), alt: it.key, loading: "lazy" });
      const mask = el("img", { class: "mask", src: api.mask(ci, it.key), alt: "", loading: "lazy" });
      img.addEventListener("error", () => stack.replaceChildren(el("div", { class: "note", text: "damaged" })));
      stack.append(img, mask);
    }
    const caption = el("figcaption", {}, `g${it.generation} ${it.key} `);
    if (!it.kept) caption.append(el("span", { class: "reason", text: it.reason }));
    const cls = `tile${it.kept ? "" : " rejected"}${it.damaged ? " damaged" : ""}`;
    return el("figure", { class: cls, "data-key": it.key, title: it.key, onclick: () => showDetail(ci, it.key, this.c) },
      stack, caption);
  }

  async toggleCharts() {
    this.charts.hidden = !this.charts.hidden;
    if (this.charts.hidden || this.charts.dataset.done) return;
    this.charts.dataset.done = "1";
    this.charts.replaceChildren(el("span", { text: "counting…" }));
    const c = this.c;
    const parts = [];
    try {
      const a = await api.audit(c.index);
      parts.push(barChart("real vs synthetic (kept)", [["real", a.real, "#3cb44b"], ["synthetic", a.synthetic, "#4363d8"]]));
      parts.push(barChart("per generation", Object.entries(a.per_generation).map(([g, n]) => [`gen ${g}`, n, "#4363d8"])));
      const rows = [];
      for (const [name, v] of Object.entries(a.per_class).slice(1)) {  // background left out
        rows.push([`${name} real`, v.images.real, "#3cb44b"], [`${name} synth`, v.images.synthetic, "#4363d8"]);
      }
      parts.push(barChart("images per class", rows));
    } catch (e) {
      parts.push(el("div", { class: "error audit-error", text: `audit: ${e.message}` }));
    }
    const rej = Object.entries(c.reasons).map(([r, n]) => [r, n, "#e6194b"]);
    parts.push(barChart("rejects by reason", rej.length ? rej : [["none", 0, "#e6194b"]]));
    this.charts.replaceChildren(...parts);
  }
}

function barChart(title, rows) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 280, label = 110, bar = 16, gap = 4, top = 22;
  const H = top + rows.length * (bar + gap) + 6;
  const max = Math.max(1, ...rows.map((r) => r[1]));
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("class", "chart");
  const text = (x, y, s, anchor = "start") => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "11");
    t.setAttribute("text-anchor", anchor); t.textContent = s;
    svg.append(t);
  };
  text(6, 14, title);
  rows.forEach(([name, n, colour], i) => {
    const y = top + i * (bar + gap);
    text(label - 4, y + 12, name, "end");
    const r = document.createElementNS(NS, "rect");
    const w = Math.round(((W - label - 40) * n) / max);
    r.setAttribute("x", label); r.setAttribute("y", y); r.setAttribute("width", w);
    r.setAttribute("height", bar); r.setAttribute("fill", colour);
    svg.append(r);
    text(label + w + 4, y + 12, String(n));
  });
  return svg;
}

// --- the detail view ---

function kv(pairs) {
  const t = el("table", { class: "kv" });
  for (const [k, v, cls] of pairs) t.append(el("tr", {}, el("td", { text: k }), el("td", { class: cls || "", text: v })));
  return t;
}

function lineageLines(lin) {
  const out = [`${lin.corpus_id} (version ${lin.version}, ${lin.policy || "unknown"})`];
  for (const s of lin.policy_sources) out.push(`  ← ${s.taken} samples of ${s.corpus_id} (version ${s.version})`);
  if (lin.generator) {
    out.push(`  ← rendered by ${lin.generator.id} (its samples are generation ${lin.generator.sample_generation})`);
    for (const d of lin.generator.trained_on) out.push(`       ← trained on ${d.corpus_id}`);
  }
  if (lin.labeler) {
    const how = lin.labeler.support_corpus ? `support set from ${lin.labeler.support_corpus}` : "zero-shot";
    out.push(`  ← labeled by ${lin.labeler.id} (${how})`);
  }
  for (const p of lin.parents) out.push(`  ← parent ${p}`);
  return out.join("\n");
}

async function showDetail(ci, key, c) {
  const body = document.getElementById("detail-body");
  body.replaceChildren(el("p", { text: `loading ${key}…` }));
  document.getElementById("detail").hidden = false;
  let d;
  try {
    d = await api.detail(ci, key);
  } catch (e) {
    body.replaceChildren(el("div", { class: "error", text: e.message }));
    return;
  }
  const big = (cls) => {
    const s = el("div", { class: `stack ${cls}` });
    if (d.damaged) s.append(el("div", { class: "note", text: `damaged: ${d.damaged}` }));
    else if (!d.stored) s.append(el("div", { class: "note", text: "image not kept" }));
    else {
      if (cls !== "only-mask") s.append(el("img", { class: "img", src: api.image(ci, key), alt: key }));
      if (cls !== "only-image") s.append(el("img", { class: "mask", src: api.mask(ci, key), alt: "" }));
    }
    return s;
  };
  const facts = kv([
    ["key", d.key, "key"],
    ["corpus", `${c.name} (${c.corpus_id})`],
    ["origin", d.origin],
    ["generation", String(d.generation)],
    ["status", d.kept ? "kept" : `rejected: ${d.reason}`, "status"],
    ["seed", d.seed === null ? "–" : String(d.seed), "seed"],
    ["classes", d.classes_present.join(", ")],
    ...Object.entries(d.scores).map(([n, v]) => [SCORE_NAMES[n] || n, fmt(v)]),
  ]);
  const parts = [el("h2", { text: key }), el("div", { class: "detail-top" }, el("div", { class: "pair" }, big("only-image"), big("overlay")), facts)];
  if (d.damaged) parts.push(el("div", { class: "error", text: `damaged: ${d.damaged}` }));
  parts.push(el("h3", { text: "reproduce" }));
  parts.push(d.command ? el("code", { class: "command", text: d.command }) : el("p", { text: "no command renders this sample again (not a generated sample)" }));
  parts.push(el("h3", { text: "lineage" }), el("pre", { class: "lineage", text: lineageLines(d.lineage) }));
  parts.push(el("h3", { text: `${key}.json` }), el("pre", { class: "meta", text: d.meta ? JSON.stringify(d.meta, null, 2) : "not stored" }));
  parts.push(el("h3", { text: "manifest row" }), el("pre", { class: "row", text: JSON.stringify(d.row, null, 2) }));
  body.replaceChildren(...parts);
}

function closeDetail() {
  document.getElementById("detail").hidden = true;
}

// --- the page ---

async function main() {
  let corpora;
  try {
    corpora = await api.corpora();
  } catch (e) {
    const f = document.getElementById("fatal");
    f.textContent = e.message;
    f.hidden = false;
    return;
  }
  const columns = document.getElementById("columns");
  const picker = document.getElementById("corpora");
  const cols = corpora.map((c) => new Column(c));
  cols.forEach((col, i) => {
    const box = el("input", { type: "checkbox", "data-corpus": i, checked: i < 2 });
    box.addEventListener("change", () => { col.node.hidden = !box.checked; });
    col.node.hidden = !box.checked;
    picker.append(el("label", {}, box, ` ${col.c.name}`));
    columns.append(col.node);
    col.load();
  });
  const mode = document.getElementById("mode");
  mode.addEventListener("change", () => { document.body.className = `mode-${mode.value}`; });
  const opacity = document.getElementById("opacity");
  const setOpacity = () => document.documentElement.style.setProperty("--opacity", opacity.value / 100);
  opacity.addEventListener("input", setOpacity);
  setOpacity();
  const tile = document.getElementById("tile");
  tile.addEventListener("input", () => document.documentElement.style.setProperty("--tile", `${tile.value}px`));
  document.getElementById("close").addEventListener("click", closeDetail);
  document.getElementById("detail").addEventListener("click", (e) => { if (e.target.id === "detail") closeDetail(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDetail(); });
}

main();
