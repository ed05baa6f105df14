// Progress polling and live charts. Loaded with `defer`; no inline script exists (CSP).
"use strict";

(function () {
  const POLL_LIVE_MS = 2000;
  const POLL_JOB_MS = 1000;
  const HISTORY = 60;

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) {
          // The session ended: let the server send the person to the login page.
          window.location.reload();
          throw new Error("logged out");
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      });
  }

  function humanBytes(value) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let size = value;
    let unit = 0;
    while (Math.abs(size) >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
    return (unit === 0 ? size.toFixed(0) : size.toFixed(1)) + " " + units[unit];
  }

  function drawSpark(svg, values, ceiling) {
    const line = svg.querySelector("polyline");
    if (!line || values.length === 0) return;
    const top = ceiling || Math.max.apply(null, values.concat([1]));
    // Spread what has arrived over the whole width, so a fresh page shows a line at once.
    const step = 120 / Math.max(values.length - 1, 1);
    const points = values.map(function (v, i) {
      const y = 31 - (Math.min(v, top) / top) * 30;
      return (i * step).toFixed(1) + "," + y.toFixed(1);
    });
    line.setAttribute("points", points.join(" "));
  }

  function startLive(section) {
    const url = section.dataset.liveUrl;
    const series = { cpu: [], memory: [], disk: [], net: [] };
    let lastNet = null;
    function push(name, value) {
      series[name].push(value);
      if (series[name].length > HISTORY) series[name].shift();
    }
    function show(name, text) {
      const out = section.querySelector('output[data-value="' + name + '"]');
      if (out) out.textContent = text;
    }
    function tick() {
      getJSON(url).then(function (live) {
        push("cpu", live.cpu_percent);
        show("cpu", live.cpu_percent.toFixed(1));
        push("memory", 100 * live.memory.used / Math.max(live.memory.total, 1));
        show("memory", humanBytes(live.memory.used) + " of " + humanBytes(live.memory.total));
        push("disk", 100 * live.disk.used / Math.max(live.disk.total, 1));
        show("disk", humanBytes(live.disk.used) + " of " + humanBytes(live.disk.total));
        let rx = 0;
        let tx = 0;
        Object.keys(live.net || {}).forEach(function (name) {
          rx += live.net[name].rx_bytes;
          tx += live.net[name].tx_bytes;
        });
        const now = Date.now();
        if (lastNet) {
          const seconds = Math.max((now - lastNet.at) / 1000, 0.001);
          const rxRate = Math.max(rx - lastNet.rx, 0) / seconds;
          const txRate = Math.max(tx - lastNet.tx, 0) / seconds;
          push("net", rxRate + txRate);
          show("net", "in " + humanBytes(rxRate) + "/s · out " + humanBytes(txRate) + "/s");
        }
        lastNet = { rx: rx, tx: tx, at: now };
        show("time", String(live.time).replace("T", " ").slice(0, 19));
        section.querySelectorAll("figure[data-series]").forEach(function (figure) {
          const name = figure.dataset.series;
          drawSpark(figure.querySelector("svg"), series[name], name === "net" ? 0 : 100);
        });
      }).catch(function () { /* the next tick tries again */ });
    }
    tick();
    window.setInterval(tick, POLL_LIVE_MS);
  }

  function followJob(box) {
    const bar = box.querySelector("progress");
    const status = box.querySelector(".job-status");
    function tick() {
      getJSON(box.dataset.jobUrl).then(function (job) {
        bar.value = job.progress || 0;
        bar.textContent = (job.progress || 0) + "%";
        status.textContent = job.state + " " + (job.progress || 0) + "%" +
          (job.message ? " · " + job.message : "");
        if (job.finished) {
          // Reload once so the server renders the result, chart and log.
          window.location.reload();
        } else {
          window.setTimeout(tick, POLL_JOB_MS);
        }
      }).catch(function () { window.setTimeout(tick, POLL_JOB_MS * 3); });
    }
    window.setTimeout(tick, POLL_JOB_MS);
  }

  function copyButton(button) {
    // Copies a readonly textarea (a node card) to the clipboard; selecting it is the fallback.
    const source = document.getElementById(button.dataset.copyTarget);
    const status = button.parentElement.querySelector(".copy-status");
    function say(text) { if (status) status.textContent = text; }
    button.addEventListener("click", function () {
      if (!source) return;
      source.focus();
      source.select();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(source.value).then(
          function () { say("Copied."); },
          function () { say("Selected: press Ctrl+C to copy."); });
      } else {
        say("Selected: press Ctrl+C to copy.");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("button[data-copy-target]").forEach(copyButton);
    document.querySelectorAll("[data-live-url]").forEach(startLive);
    document.querySelectorAll('.job-progress[data-finished="false"]').forEach(followJob);
  });
})();
