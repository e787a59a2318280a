// Talking to the gateway: JSON requests with the API key of this tab (sessionStorage only, sent as a Bearer
// token, never in a URL), and the gateway's OpenAI-shaped errors as ApiError.

const KEY_ITEM = "aligngate.apiKey";

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_ITEM) || "";
  } catch {
    return "";
  }
}

export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_ITEM, key);
    else sessionStorage.removeItem(KEY_ITEM);
  } catch {
    // storage refused (a locked-down browser): the key then lives only as long as this page
  }
}

export function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

let unauthorized = () => {};

/** `fn(error)` is called when any request answers 401 (the key is missing or was refused). */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

/** The ApiError of a failed response: the OpenAI error's message when there is one. */
export async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  const error = new ApiError(response.status, message, code);
  if (response.status === 401) unauthorized(error);
  return error;
}

function url(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

export async function getJSON(path, params) {
  const response = await fetch(url(path, params), { headers: headers({ Accept: "application/json" }) });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

export async function postJSON(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "application/json" }),
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** What a failed request says to a person. */
export function describe(error) {
  if (error instanceof ApiError) return error.message;
  if (error && error.name === "AbortError") return "Stopped.";
  if (error instanceof TypeError) return `The gateway could not be reached (${error.message}).`;
  return error && error.message ? error.message : String(error);
}
