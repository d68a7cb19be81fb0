// ivr-bridge ops console: a little vanilla JS (no build step, no CDN). The pages work without it.
(function () {
  "use strict";

  function fmt(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, r = s % 60;
    var mm = (h ? String(m).padStart(2, "0") : String(m)) + ":" + String(r).padStart(2, "0");
    return h ? h + ":" + mm : mm;
  }

  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("[data-since]").forEach(function (el) {
      var since = parseFloat(el.getAttribute("data-since"));
      if (since) { el.textContent = fmt(now - since); }
    });
  }

  function confirmForms(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); }
      });
    });
  }

  // Live calls: refresh the table from the same page every few seconds (not while a menu is open).
  function liveRefresh() {
    var live = document.getElementById("live");
    if (!live) { return; }
    var every = parseInt(live.getAttribute("data-refresh"), 10) || 3000;
    setInterval(function () {
      var active = document.activeElement;
      if (active && live.contains(active) && active.tagName === "SELECT") { return; }
      fetch(window.location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("live");
          var count = doc.getElementById("live-count");
          if (fresh) { live.innerHTML = fresh.innerHTML; confirmForms(live); tick(); }
          if (count) { document.getElementById("live-count").textContent = count.textContent; }
        })
        .catch(function () {});
    }, every);
  }

  // Call page: the playhead follows the player; clicking the waveform or a timeline line seeks.
  function player() {
    var audio = document.getElementById("player");
    var svg = document.getElementById("waveform");
    if (!audio) { return; }
    var head = document.getElementById("playhead");
    var width = svg ? svg.viewBox.baseVal.width : 0;
    var duration = svg ? parseFloat(svg.getAttribute("data-duration")) : 0;
    audio.addEventListener("timeupdate", function () {
      if (!head || !duration) { return; }
      var x = (audio.currentTime / duration) * width;
      head.setAttribute("x1", x); head.setAttribute("x2", x);
    });
    if (svg) {
      svg.addEventListener("click", function (ev) {
        var box = svg.getBoundingClientRect();
        audio.currentTime = ((ev.clientX - box.left) / box.width) * duration;
        audio.play();
      });
    }
    document.querySelectorAll(".timeline .entry[data-t]").forEach(function (li) {
      li.addEventListener("click", function () {
        audio.currentTime = parseInt(li.getAttribute("data-t"), 10) / 1000;
        audio.play();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmForms(document);
    tick();
    setInterval(tick, 1000);
    liveRefresh();
    player();
  });
})();
