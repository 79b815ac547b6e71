// The access token: kept in this tab only (sessionStorage), asked for when the server says
// a request needs one. Both the API client and the page's start use it.
import { $ } from "./dom.js";

const TOKEN_KEY = "segresearch.token";

export function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

export function setToken(t) { sessionStorage.setItem(TOKEN_KEY, t); }

export function forgetToken() { sessionStorage.removeItem(TOKEN_KEY); }

export function askToken(problem) {
  $("token-box").hidden = false;
  $("app").hidden = true;
  $("token-error").textContent = problem || "";
  $("server-line").textContent = "Authentication is on for this server.";
  $("token").focus();
}
