// Getting the entity token from the aa-token-broker sidecar with Node's built-in fetch (Node 18+).
//
// - fetch keeps one connection pool per process (undici's global dispatcher): call it per request, there is
//   no client to build. Node's fetch does not use HTTP_PROXY, so the loopback call never goes to a proxy;
//   other clients need NO_PROXY=127.0.0.1,localhost.
// - A timeout on every call (AbortSignal.timeout), and the status checked.
// - When a peer answers 401 for a token, POST .../refresh once and retry with the token it returns.
//
// Run: AA_TOKEN_BROKER_URL=http://127.0.0.1:7373 node token_client.mjs

const BROKER = (process.env.AA_TOKEN_BROKER_URL ?? "http://127.0.0.1:7373").replace(/\/$/, "");
const TIMEOUT_MS = 2000;

async function broker(method, path) {
  const response = await fetch(BROKER + path, {
    method,
    headers: { Metadata: "true" },
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  if (!response.ok) {
    // 503 token_unavailable carries Retry-After; the body says why (never a secret).
    throw new Error(`broker answered ${response.status}: ${(await response.text()).slice(0, 300)}`);
  }
  return response.json();
}

/** The current token: {accessToken, tokenType, expiresIn, expiresAt, entityId}. Ask per request. */
export const getToken = () => broker("GET", "/v1/token");

/** A new token, for when a peer rejected the current one (the broker rate-limits this per entity). */
export const refreshToken = () => broker("POST", "/v1/token/refresh");

/** POSTs JSON to an AA network peer with the entity token; on 401 refreshes once and retries. */
export async function callPeer(url, body) {
  let { accessToken } = await getToken();
  for (let attempt = 1; ; attempt++) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${accessToken}` },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(30_000),
    });
    if (response.status === 401 && attempt === 1) {
      ({ accessToken } = await refreshToken());
      continue;
    }
    if (!response.ok) throw new Error(`peer answered ${response.status}`);
    return response.json();
  }
}

// Prints facts about the token, never the token.
const token = await getToken();
console.log(`node: entityId=${token.entityId} tokenLength=${token.accessToken.length}`);
const refreshed = await refreshToken();
console.log(`node: refreshed entityId=${refreshed.entityId} tokenLength=${refreshed.accessToken.length}`);
