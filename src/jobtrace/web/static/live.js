// Keeps a page current while work is in progress: polls the page's JSON twin every few seconds,
// shows "as of" the twin's snapshot, and when the twin's version changes fetches the page again
// and swaps its content in place, with no reload. Pausing stops the polling; so does a hidden tab.
(function () {
  "use strict";
  var line = document.getElementById("live");
  if (!line || !window.fetch || !window.DOMParser) {
    return;
  }
  var src = line.getAttribute("data-src");
  var interval = Math.max(500, Number(line.getAttribute("data-interval")) || 5000);
  var version = line.getAttribute("data-version");
  var live = line.getAttribute("data-live") === "true";
  var button = document.getElementById("live-toggle");
  var status = document.getElementById("live-status");
  var paused = false;
  var failed = false;
  var timer = null;
  var inflight = false;

  function seconds(ms) {
    return Math.round(ms / 100) / 10 + " s";
  }

  function show() {
    var text;
    if (paused) {
      text = "· paused";
    } else if (failed) {
      text = "· could not update, trying again";
    } else if (live) {
      text = "· updating every " + seconds(interval);
    } else {
      text = "· nothing in progress";
    }
    status.textContent = text;
    button.hidden = !live && !paused;
    button.textContent = paused ? "Resume updates" : "Pause updates";
    button.setAttribute("aria-pressed", paused ? "true" : "false");
  }

  function asOf(iso) {
    var time = document.getElementById("as-of");
    if (!iso || !time) {
      return;
    }
    time.setAttribute("datetime", iso);
    // The server's format: 2024-11-23 02:00:00Z.
    time.textContent = new Date(iso).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function schedule() {
    window.clearTimeout(timer);
    timer = null;
    if (live && !paused && !document.hidden) {
      timer = window.setTimeout(poll, interval);
    }
    show();
  }

  function redraw() {
    var focused = document.activeElement;
    var href = focused && focused.getAttribute ? focused.getAttribute("href") : null;
    return fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(response.status);
        }
        return response.text();
      })
      .then(function (text) {
        var page = new DOMParser().parseFromString(text, "text/html");
        var content = page.getElementById("content");
        var fresh = page.getElementById("live");
        if (!content || !fresh) {
          throw new Error("not a dashboard page");
        }
        document.getElementById("content").replaceWith(content);
        version = fresh.getAttribute("data-version");
        live = fresh.getAttribute("data-live") === "true";
        var time = page.getElementById("as-of");
        asOf(time && time.getAttribute("datetime"));
        if (href && focused && !document.body.contains(focused)) {
          // Keyboard users keep their place: focus the same link in the new content.
          var links = content.querySelectorAll("a[href]");
          for (var i = 0; i < links.length; i += 1) {
            if (links[i].getAttribute("href") === href) {
              links[i].focus();
              break;
            }
          }
        }
      });
  }

  function poll() {
    window.clearTimeout(timer);
    timer = null;
    if (inflight) {
      return;
    }
    inflight = true;
    fetch(src, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(response.status);
        }
        return response.json();
      })
      .then(function (twin) {
        asOf(twin.as_of);
        live = twin.live;
        return twin.version !== version ? redraw() : null;
      })
      .then(
        function () {
          inflight = false;
          failed = false;
          schedule();
        },
        function () {
          inflight = false;
          failed = true;
          schedule();
        }
      );
  }

  button.addEventListener("click", function () {
    paused = !paused;
    if (paused) {
      schedule();
    } else {
      poll();
      show();
    }
  });
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      schedule();
    } else if (live && !paused && timer === null) {
      poll();
    }
  });
  line.setAttribute("data-ready", "true");
  schedule();
})();
