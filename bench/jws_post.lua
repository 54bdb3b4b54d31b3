-- wrk script for the signature routes: POST a fixed body of BODY_BYTES bytes (default 1024, all 'x'), with
-- `Metadata: true` and, when JWS is set, `x-jws-signature: $JWS`; then the JSON report of report.lua.
local bytes = tonumber(os.getenv("BODY_BYTES") or "1024")
wrk.method = "POST"
wrk.body = string.rep("x", bytes)
wrk.headers["Metadata"] = "true"
wrk.headers["Content-Type"] = "application/json"
local jws = os.getenv("JWS")
if jws and jws ~= "" then
  wrk.headers["x-jws-signature"] = jws
end
dofile(os.getenv("REPORT_LUA"))
