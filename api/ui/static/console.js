/* The Barge console's job page: draws the throughput over time, the shard timeline and a
   fine-tune's curves from the page's JSON (#job-data), and keeps them live: while the job runs
   it asks /ui/jobs/{id}/live once a second (never more often: the next request leaves a
   second after the last answer), and stops once the job is final. No page reloads. The
   charts' point counts are left in data-points (and the timeline's bar count in data-bars)
   for whoever reads the page without seeing it. */
(function () {
  "use strict";

  var holder = document.getElementById("job-data");
  if (!holder) { return; }
  var data = JSON.parse(holder.textContent);
  var base = window.location.pathname.replace(/\/jobs\/[^/]+\/?$/, "");
  var POLL_MS = 1000;
  var COLORS = {rate: "#2563eb", tokens: "#059669", reference: "#6b7280", train: "#2563eb",
                validation: "#dc2626", lr: "#7c3aed"};
  var charts = {};

  function byId(id) { return document.getElementById(id); }

  function text(id, value) {
    var el = byId(id);
    if (el) { el.textContent = value; }
  }

  function number(value, digits) {
    if (value === null || value === undefined) { return "—"; }
    if (Number.isInteger(value)) { return value.toLocaleString("en-US"); }
    return value.toLocaleString("en-US", {maximumFractionDigits: digits === undefined ? 1 : digits});
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) { return "—"; }
    var s = Math.max(0, Math.round(seconds));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) { return h + "h " + m + "m " + r + "s"; }
    return m ? m + "m " + r + "s" : r + "s";
  }

  function when(value) {
    if (value === null || value === undefined) { return "—"; }
    var d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function width(el) { return Math.max(320, (el.clientWidth || 800) - 8); }

  // --- charts ------------------------------------------------------------------------------

  function chart(id, series, columns, options) {
    var el = byId(id);
    if (!el || typeof uPlot === "undefined") { return; }
    if (charts[id] && charts[id].series.length !== series.length) {
      charts[id].destroy();  // a series appeared (validation loss, the steady rate): draw anew
      delete charts[id];
    }
    if (charts[id]) {
      charts[id].setData(columns);
    } else {
      el.textContent = "";
      var opts = Object.assign({width: width(el), height: el.classList.contains("small") ? 160 : 260,
                                series: series, legend: {live: true}}, options || {});
      charts[id] = new uPlot(opts, columns, el);
    }
    return el;
  }

  function steadyNote(tp) {
    var note = byId("steady-note");
    if (!note || !tp.steady) { return; }
    note.textContent = "Dashed: the model's steady rate (" + number(tp.steady.records_per_second, 2) +
      " records/s per shard, the median of its last " + tp.steady.attempts +
      " finished shards) times the shards running.";
  }

  function throughput(tp) {
    steadyNote(tp);
    var series = [{}, {label: tp.unit, stroke: COLORS.rate, width: 2, points: {show: true, size: 5}}];
    var columns = [tp.t, tp.rate];
    if (tp.tokens_rate) {
      series.push({label: "tokens/s", stroke: COLORS.tokens, width: 2, scale: "tokens",
                   points: {show: true, size: 4}});
      columns.push(tp.tokens_rate);
    }
    if (tp.reference) {
      series.push({label: "steady rate × shards running", stroke: COLORS.reference, dash: [6, 4]});
      columns.push(tp.reference);
    }
    var axes = [{}, {label: tp.unit}];
    if (tp.tokens_rate) { axes.push({side: 1, scale: "tokens", label: "tokens/s", grid: {show: false}}); }
    var el = chart("throughput", series, columns, {axes: axes, scales: {x: {time: true}}});
    if (el) { el.dataset.points = String(tp.t.length); }
    text("samples-count", String(tp.t.length));
    samplesTable(tp);
  }

  function samplesTable(tp) {
    var body = document.querySelector("#samples-table tbody");
    if (!body) { return; }
    body.textContent = "";
    for (var i = 0; i < tp.t.length; i++) {
      var row = document.createElement("tr");
      row.className = "sample";
      [when(tp.t[i]), number(tp.done[i]), number(tp.rate[i], 2), String(tp.running[i])].forEach(function (v) {
        var cell = document.createElement("td");
        cell.textContent = v;
        row.appendChild(cell);
      });
      body.appendChild(row);
    }
  }

  function finetune(ft) {
    var loss = ft.loss;
    var steps = loss.step.slice();
    var validation = {};
    ft.epochs.forEach(function (e) {
      if (typeof e.validation_loss === "number" && typeof e.step === "number") {
        validation[e.step] = e.validation_loss;
        if (steps.indexOf(e.step) < 0) { steps.push(e.step); }
      }
    });
    steps.sort(function (a, b) { return a - b; });
    var train = {};
    loss.step.forEach(function (s, i) { train[s] = loss.train_loss[i]; });
    var columns = [steps, steps.map(function (s) { return s in train ? train[s] : null; })];
    var series = [{label: "step"}, {label: "training loss", stroke: COLORS.train, width: 2,
                                    points: {show: true, size: 4}}];
    if (Object.keys(validation).length) {
      columns.push(steps.map(function (s) { return s in validation ? validation[s] : null; }));
      series.push({label: "validation loss", stroke: COLORS.validation, width: 2, spanGaps: true,
                   points: {show: true, size: 6}});
    }
    var scales = {x: {time: false}};
    var el = chart("loss-chart", series, columns, {scales: scales, axes: [{label: "step"}, {label: "loss"}]});
    if (el) { el.dataset.points = String(loss.step.length); }
    var small = {size: 70, values: function (u, values) {
      return values.map(function (v) { return v === null ? "" : v.toExponential(1); });
    }};
    var lr = chart("lr-chart", [{label: "step"}, {label: "learning rate", stroke: COLORS.lr, width: 2}],
                   [loss.step, loss.learning_rate], {scales: scales, axes: [{label: "step"}, small]});
    if (lr) { lr.dataset.points = String(loss.step.length); }
  }

  // --- the shard timeline --------------------------------------------------------------------

  function timeline(tl, now) {
    var el = byId("timeline");
    if (!el) { return; }
    el.textContent = "";
    var bars = tl.bars;
    el.dataset.bars = String(bars.length);
    if (!bars.length) {
      var empty = document.createElement("p");
      empty.className = "muted";
      empty.textContent = "No shard has started yet.";
      el.appendChild(empty);
      return;
    }
    var start = Math.min.apply(null, bars.map(function (b) { return b.start; }));
    var end = Math.max(now, Math.max.apply(null, bars.map(function (b) { return b.end || now; })));
    var span = Math.max(end - start, 1);
    tl.workers.forEach(function (worker) {
      var row = document.createElement("div");
      row.className = "tl-row";
      row.dataset.worker = worker;
      var label = document.createElement("div");
      label.className = "tl-label";
      label.textContent = worker;
      var track = document.createElement("div");
      track.className = "tl-track";
      bars.filter(function (b) { return b.worker === worker; }).forEach(function (b) {
        var bar = document.createElement("div");
        bar.className = "tl-bar " + b.outcome;
        bar.dataset.shard = String(b.shard);
        bar.dataset.attempt = String(b.attempt);
        bar.dataset.outcome = b.outcome;
        bar.style.left = (100 * (b.start - start) / span) + "%";
        bar.style.width = Math.max(0.4, 100 * ((b.end || now) - b.start) / span) + "%";
        bar.title = "shard " + b.shard + " attempt " + b.attempt + ": " + b.outcome + ", " +
          number(b.records) + " records, " + duration((b.end || now) - b.start) +
          (b.error ? "\n" + b.error : "");
        bar.textContent = String(b.shard);
        track.appendChild(bar);
      });
      row.appendChild(label);
      row.appendChild(track);
      el.appendChild(row);
    });
    var axis = document.createElement("div");
    axis.className = "tl-axis muted";
    axis.textContent = when(start) + " → " + when(end) + " (" + duration(span) + ")";
    el.appendChild(axis);
    text("attempts-count", String(bars.length));
  }

  // --- the rest of the page ------------------------------------------------------------------

  function status(job) {
    var badge = byId("job-status");
    if (badge) { badge.textContent = job.status; badge.className = "status " + job.status; }
    var shown = job.percent === null ? "—" : number(job.percent) + " %";
    text("job-percent", shown);
    var bar = byId("job-progress");
    if (bar) {
      bar.setAttribute("aria-valuenow", String(job.percent || 0));
      var fill = bar.querySelector(".fill");
      fill.style.width = (job.percent || 0) + "%";
      fill.className = "fill " + job.status;
    }
    var p = job.progress;
    text("records-done", number(p.records_succeeded + p.records_failed));
    text("records-total", number(p.records_total));
    text("records-failed", number(p.records_failed));
    text("shards-done", number(p.shards_done));
    text("shards-total", number(p.shards_total));
    text("steps-done", number(p.steps_done));
    text("steps-total", number(p.steps_total));
    text("job-rate", number(p.records_per_second));
    text("job-eta", duration(p.eta_seconds));
    text("job-waiting", job.waiting || "—");
    text("job-started", when(job.started_at));
    text("job-finished", when(job.finished_at));
    byId("cancel-form").hidden = job.final;
    byId("pause-form").hidden = job.status !== "running";
    byId("resume-form").hidden = !(job.status === "pausing" || job.status === "paused");
    byId("retry-form").hidden = !(job.status === "failed" || job.status === "cancelled");
  }

  function fragments(html) {
    Object.keys(html || {}).forEach(function (name) {
      var el = byId(name === "finetune_outputs" ? "finetune-outputs" : name);
      if (el) { el.innerHTML = html[name]; }  // rendered (and escaped) by the server's templates
    });
  }

  function draw(d) {
    status(d.job);
    byId("retry-failed-form").hidden = !d.retry_failed;
    throughput(d.throughput);
    timeline(d.timeline, d.now);
    if (d.finetune) { finetune(d.finetune); }
    fragments(d.html);
  }

  function live(withErrors) {
    var url = base + "/jobs/" + encodeURIComponent(data.job.id) + "/live" +
      (withErrors ? "?errors=1" : "");
    return fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.json() : null;
      });
  }

  // Errors files are read every fifth answer while records fail, and once more at the end.
  var polls = 0;

  function poll() {
    window.setTimeout(function () {
      polls += 1;
      var withErrors = data.job.progress.records_failed > 0 && polls % 5 === 0;
      live(withErrors).then(function (fresh) {
        if (!fresh) { poll(); return; }
        data = fresh;
        draw(fresh);
        if (!fresh.job.final) { poll(); return; }
        if (fresh.job.progress.records_failed > 0 && !withErrors) {
          live(true).then(function (last) { if (last) { data = last; draw(last); } });
        }
      }).catch(function () { poll(); });
    }, POLL_MS);
  }

  draw(data);
  if (!data.job.final) { poll(); }
  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var el = byId(id);
      charts[id].setSize({width: width(el), height: charts[id].height});
    });
  });
})();
