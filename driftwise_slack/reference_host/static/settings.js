/* Settings page: the Slack Integration card and the schedules, driven by the public JSON API.
 * Every text that comes from the API is written with textContent, never as HTML. */
(function () {
  "use strict";

  var STATUS_PATH = "/api/v2/webhooks/slack/status";
  var INSTALL_PATH = "/api/v2/webhooks/slack/install";
  var TEST_PATH = "/api/v2/webhooks/slack/test";
  var DELIVERIES_PATH = "/api/v2/webhooks/slack/deliveries";
  var PROBLEMS_PATH = "/api/v2/delivery-problems";
  var PENDING = ["pending", "queued", "sending"];
  var KIND_LABELS = {
    scheduled_scan_failed: "Scan failed",
    schedule_auto_disabled: "Schedule disabled"
  };
  var PLAN_NAMES = { free: "Free", team: "Team", enterprise: "Enterprise" };

  var state = { me: null, slack: null, available: false };

  function $(id) { return document.getElementById(id); }
  function show(node, visible) { node.hidden = !visible; }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function api(method, path, body) {
    var headers = { "Accept": "application/json", "X-Requested-With": "fetch" };
    var init = { method: method, headers: headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        return { status: response.status, data: data || {} };
      });
    }, function () {
      return { status: 0, data: { error: "network",
        message: "DriftWise could not be reached. Check your connection and try again." } };
    });
  }

  function messageOf(result, fallback) {
    var message = result.data && result.data.message;
    return typeof message === "string" && message ? message : fallback;
  }

  function formatDate(iso) {
    var date = new Date(iso);
    if (!iso || isNaN(date.getTime())) { return ""; }
    return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  function canManage() {
    return !!state.me && (state.me.role === "owner" || state.me.role === "admin");
  }

  function planAllowsSlack() {
    return !!state.me && (state.me.org.plan === "team" || state.me.org.plan === "enterprise");
  }

  function say(id, text) {
    var node = $(id);
    node.textContent = text || "";
    show(node, !!text);
  }

  /* ---- who am I ---- */

  function loadMe() {
    return api("GET", "/api/v2/me").then(function (r) {
      if (r.status === 401) { window.location.assign("/login"); return false; }
      if (r.status !== 200) { say("page-error", messageOf(r, "Your account could not be loaded.")); return false; }
      state.me = r.data;
      $("me-email").textContent = r.data.email;
      $("me-org").textContent = r.data.org.slug + " · " + (PLAN_NAMES[r.data.org.plan] || r.data.org.plan) + " plan";
      show($("me-org"), true);
      return true;
    });
  }

  /* ---- the Slack card ---- */

  function loadSlack() {
    return api("GET", STATUS_PATH).then(function (r) {
      // 404: Slack is not mounted here; available:false: no Slack app configured. Hide the tile.
      if (r.status === 404 || (r.status === 200 && r.data.available === false)) {
        state.available = false;
        show($("slack-card"), false);
        return;
      }
      state.available = true;
      show($("slack-card"), true);
      if (r.status !== 200) {
        state.slack = null;
        $("slack-status").textContent = "The Slack connection could not be checked.";
        say("slack-error", messageOf(r, "Try again in a moment."));
        return;
      }
      state.slack = r.data;
      renderSlack();
    });
  }

  function renderSlack() {
    var s = state.slack || { installed: false };
    var connected = s.installed === true;
    var manage = canManage();
    var badge = $("slack-badge");
    badge.textContent = connected ? "Connected" : "Not connected";
    badge.className = "badge " + (connected ? "badge-on" : "badge-off");
    $("slack-status").textContent = connected
      ? "Connected to " + (s.team_name || s.team_id || "a Slack workspace")
      : "Slack is not connected.";
    show($("slack-details"), connected);
    if (connected) {
      $("slack-scopes").textContent = (s.scopes || []).join(", ");
      $("slack-since").textContent = formatDate(s.created_at);
    }
    show($("slack-connect-box"), !connected && manage);
    $("slack-connect").disabled = !planAllowsSlack();
    show($("slack-manage"), connected && manage);
    var note = "";
    if (!manage) {
      note = connected ? "Ask an owner or admin to change the Slack connection."
                       : "Ask an owner or admin to connect Slack.";
    } else if (!connected && !planAllowsSlack()) {
      note = "Slack notifications need the Team or Enterprise plan.";
    }
    say("slack-note", note);
  }

  function connect() {
    var button = $("slack-connect");
    button.disabled = true;
    say("slack-error", "");
    say("slack-message", "");
    api("POST", INSTALL_PATH).then(function (r) {
      if (r.status === 200 && typeof r.data.url === "string" && /^https?:\/\//i.test(r.data.url)) {
        window.location.assign(r.data.url);
        return;
      }
      button.disabled = !planAllowsSlack();
      say("slack-error", messageOf(r, "Slack could not be connected. Try again in a moment."));
    });
  }

  function disconnect() {
    if (!window.confirm("Disconnect Slack? DriftWise will stop posting scan failures to Slack.")) {
      return;
    }
    var button = $("slack-disconnect");
    button.disabled = true;
    say("slack-error", "");
    api("DELETE", INSTALL_PATH).then(function (r) {
      button.disabled = false;
      if (r.status === 200 && r.data.uninstalled) {
        say("slack-message", "Slack is disconnected.");
        $("slack-test-result").textContent = "";
      } else {
        say("slack-error", messageOf(r, "Slack could not be disconnected. Try again in a moment."));
      }
      return loadSlack();
    });
  }

  function sendTest() {
    var channel = $("slack-test-channel").value.trim();
    var out = $("slack-test-result");
    var button = $("slack-test-send");
    if (!channel) {
      out.textContent = "Enter a channel, like #alerts.";
      out.className = "result error";
      return;
    }
    button.disabled = true;
    out.textContent = "Sending…";
    out.className = "result";
    api("POST", TEST_PATH, { channel: channel }).then(function (r) {
      button.disabled = false;
      if (r.status === 200 && r.data.ok) {
        out.textContent = "Test message sent to " + (r.data.channel || channel) + ".";
        out.className = "result success";
      } else {
        out.textContent = messageOf(r, "The test message could not be sent.");
        out.className = "result error";
        if (r.data && r.data.error === "not_installed") { loadSlack(); }
      }
    });
  }

  /* ---- schedules and their deliveries ---- */

  function scheduleStateText(s) {
    if (!s.enabled) {
      return "Disabled after " + s.consecutive_failures + " consecutive failed scans";
    }
    if (s.consecutive_failures > 0) {
      return "Enabled · " + s.consecutive_failures + " consecutive failed scan" +
        (s.consecutive_failures === 1 ? "" : "s");
    }
    return "Enabled";
  }

  function scheduleItem(s) {
    var item = el("li", "schedule");
    item.id = "schedule-" + s.id;
    var head = el("div", "schedule-head");
    head.appendChild(el("strong", "schedule-name", s.name));
    head.appendChild(el("span", "muted", s.notify_slack_channel
      ? "Slack: " + s.notify_slack_channel : "No Slack channel"));
    item.appendChild(head);
    var status = el("p", "schedule-state" + (s.enabled ? "" : " warn"), scheduleStateText(s));
    status.id = "schedule-state-" + s.id;
    item.appendChild(status);
    if (canManage()) {
      var row = el("div", "actions");
      var button = el("button", "button small", "Fail a scheduled scan now");
      button.type = "button";
      button.id = "fail-scan-" + s.id;
      button.addEventListener("click", function () { failScan(s.id); });
      row.appendChild(button);
      var result = el("span", "result");
      result.id = "fail-result-" + s.id;
      result.setAttribute("role", "status");
      row.appendChild(result);
      item.appendChild(row);
    }
    if (state.available) {
      item.appendChild(el("h3", "subhead", "Recent Slack deliveries"));
      var list = el("ul", "deliveries");
      list.id = "deliveries-" + s.id;
      item.appendChild(list);
    }
    return item;
  }

  function loadSchedules() {
    return api("GET", "/api/v2/schedules").then(function (r) {
      if (r.status !== 200) { say("page-error", messageOf(r, "Schedules could not be loaded.")); return; }
      var list = $("schedules");
      list.replaceChildren();
      var schedules = r.data.schedules || [];
      show($("schedules-empty"), schedules.length === 0);
      schedules.forEach(function (s) { list.appendChild(scheduleItem(s)); });
      if (state.available) { schedules.forEach(function (s) { loadDeliveries(s.id); }); }
    });
  }

  function deliveryItem(d) {
    var item = el("li", "delivery");
    var status = String(d.status || "unknown");
    item.appendChild(el("span", "badge status-" + status.replace(/[^a-z_]/g, ""), status));
    item.appendChild(el("span", "delivery-kind", KIND_LABELS[d.kind] || d.kind));
    if (d.channel) { item.appendChild(el("span", "muted", d.channel)); }
    item.appendChild(el("span", "muted", formatDate(d.sent_at || d.created_at)));
    if (d.attempts > 1) { item.appendChild(el("span", "muted", d.attempts + " attempts")); }
    // Where it went in Slack: a reply in the schedule's thread, or one line of a digest.
    if (d.digest) { item.appendChild(el("span", "muted delivery-where", "in a digest")); }
    else if (d.thread_ts) { item.appendChild(el("span", "muted delivery-where", "reply in thread")); }
    if (d.reason) { item.appendChild(el("div", "delivery-reason", d.reason)); }
    return item;
  }

  function loadDeliveries(scheduleId) {
    var query = "?schedule_id=" + encodeURIComponent(scheduleId) + "&limit=5";
    return api("GET", DELIVERIES_PATH + query).then(function (r) {
      var list = $("deliveries-" + scheduleId);
      if (!list) { return []; }
      list.replaceChildren();
      if (r.status !== 200) {
        list.appendChild(el("li", "muted", messageOf(r, "Deliveries could not be loaded.")));
        return [];
      }
      var deliveries = r.data.deliveries || [];
      if (deliveries.length === 0) { list.appendChild(el("li", "muted", "No deliveries yet.")); }
      deliveries.forEach(function (d) { list.appendChild(deliveryItem(d)); });
      return deliveries;
    });
  }

  function pollDeliveries(scheduleId) {
    var rounds = 0;
    function tick() {
      rounds += 1;
      loadDeliveries(scheduleId).then(function (deliveries) {
        var busy = deliveries.some(function (d) { return PENDING.indexOf(d.status) !== -1; });
        if ((busy || rounds < 2) && rounds < 15) { window.setTimeout(tick, 1500); }
      });
    }
    window.setTimeout(tick, 400);
  }

  function failScan(scheduleId) {
    var button = $("fail-scan-" + scheduleId);
    var out = $("fail-result-" + scheduleId);
    button.disabled = true;
    out.textContent = "Recording a failed scan…";
    out.className = "result";
    api("POST", "/api/v2/schedules/" + scheduleId + "/fail", {}).then(function (r) {
      button.disabled = false;
      if (r.status !== 200) {
        out.textContent = messageOf(r, "The scan could not be recorded.");
        out.className = "result error";
        return;
      }
      var s = { enabled: !r.data.disabled, consecutive_failures: r.data.consecutive_failures };
      var line = $("schedule-state-" + scheduleId);
      line.textContent = scheduleStateText(s);
      line.className = "schedule-state" + (s.enabled ? "" : " warn");
      out.textContent = "Failed scan recorded." + (r.data.disabled ? " The schedule is disabled." : "");
      out.className = "result success";
      if (state.available) { pollDeliveries(scheduleId); }
    });
  }

  /* ---- delivery problems: the banner until dismissed or a later delivery is sent ---- */

  function problemItem(p) {
    var item = el("div", "flash flash-error problem");
    item.id = "slack-problem-" + p.id;
    item.appendChild(el("strong", null, "Slack notifications for \u201c" + p.schedule_name +
      "\u201d are not arriving."));
    item.appendChild(el("p", "problem-advice", p.advice));
    if (canManage()) {
      var button = el("button", "button small", "Dismiss");
      button.type = "button";
      button.id = "slack-problem-dismiss-" + p.id;
      button.addEventListener("click", function () {
        button.disabled = true;
        api("POST", PROBLEMS_PATH + "/" + encodeURIComponent(p.id) + "/dismiss").then(function (r) {
          if (r.status === 200 || r.status === 404) { loadProblems(); return; }
          button.disabled = false;
          say("page-error", messageOf(r, "The notice could not be dismissed."));
        });
      });
      item.appendChild(button);
    }
    return item;
  }

  function loadProblems() {
    return api("GET", PROBLEMS_PATH).then(function (r) {
      var box = $("slack-problems");
      box.replaceChildren();
      var problems = r.status === 200 ? (r.data.problems || []) : [];
      problems.forEach(function (p) { box.appendChild(problemItem(p)); });
      show(box, problems.length > 0);
    });
  }

  /* ---- start ---- */

  function start() {
    if (window.location.search) {
      // The flash was rendered by the server; drop ?slack=... so a reload does not repeat it.
      window.history.replaceState(null, "", window.location.pathname);
    }
    $("slack-connect").addEventListener("click", connect);
    $("slack-disconnect").addEventListener("click", disconnect);
    $("slack-test-send").addEventListener("click", sendTest);
    $("slack-test-channel").addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); sendTest(); }
    });
    loadMe().then(function (ok) {
      if (!ok) { return; }
      return loadSlack().then(loadSchedules).then(loadProblems);
    });
  }

  start();
}());
