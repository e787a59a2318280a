// The page's entry point: what the gateway serves (GET /ui/api/info), the API key when it needs one, the tabs.

import { apiKey, ApiError, describe, getJSON, onUnauthorized, setApiKey } from "./api.js";
import { say, show } from "./dom.js";
import { Experiment } from "./experiment.js";
import { KNOWN_ARMS, Playground } from "./playground.js";
import { Traces } from "./traces.js";

const $ = (id) => document.getElementById(id);
const TABS = ["playground", "experiment", "traces"];
const REFUSED = "The API key was refused. Check it and try again.";

const views = {};
let started = false;

/** GET /ui/api/info; a gateway without it (404) is asked for its models instead, the rest left unknown. */
async function loadInfo() {
  try {
    return await getJSON("/ui/api/info");
  } catch (error) {
    if (!(error instanceof ApiError) || (error.status !== 404 && error.status !== 503)) throw error;
  }
  const models = await getJSON("/v1/models");
  return {
    experiment: null,
    arms: KNOWN_ARMS,
    models: (models.data || []).map((m) => m.id),
    auth: null,
    store: null,
    log_bodies: null,
  };
}

function askForKey(message) {
  show($("main"), false);
  show($("boot-message"), false);
  show($("auth"));
  show($("forget-key"), false);
  const text = $("auth-message");
  text.textContent = message || "";
  show(text, Boolean(message));
  $("api-key").focus();
}

async function boot() {
  say($("boot-message"), "Loading…");
  show($("boot-message"));
  let info;
  try {
    info = await loadInfo();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      const hadKey = Boolean(apiKey());
      setApiKey("");
      askForKey(hadKey ? REFUSED : "");
    } else {
      say($("boot-message"), `The gateway could not be reached: ${describe(error)}`, "error");
    }
    return;
  }
  show($("auth"), false);
  show($("boot-message"), false);
  show($("main"));
  show($("forget-key"), Boolean(apiKey()));
  $("experiment-name").textContent = info.experiment ? `experiment ${info.experiment}` : "";
  if (!started) {
    started = true;
    views.playground = new Playground(info);
    views.experiment = new Experiment(info);
    views.traces = new Traces(info);
    const first = TABS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "playground";
    selectTab(first);
  }
}

function selectTab(name) {
  for (const tab of TABS) {
    const selected = tab === name;
    $(`tab-button-${tab}`).setAttribute("aria-selected", String(selected));
    show($(`tab-${tab}`), selected);
  }
  if (location.hash.slice(1) !== name) history.replaceState(null, "", `#${name}`);
  const view = views[name];
  if (view && view.shown) view.shown();
}

function init() {
  for (const tab of TABS) $(`tab-button-${tab}`).addEventListener("click", () => selectTab(tab));
  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    setApiKey(key);
    $("api-key").value = "";
    boot();
  });
  $("forget-key").addEventListener("click", () => {
    setApiKey("");
    location.reload();
  });
  // a 401 later on (the key was removed from the gateway's configuration, say): ask again
  onUnauthorized(() => {
    if (!started) return;
    setApiKey("");
    askForKey(REFUSED);
  });
  boot();
}

init();
