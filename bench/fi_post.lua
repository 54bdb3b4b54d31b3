-- wrk script for the FI routes: POST the body in the file BODY_FILE (or an empty one) with `Metadata: true`;
-- then the JSON report of report.lua.
wrk.method = "POST"
local path = os.getenv("BODY_FILE")
if path and path ~= "" then
  local file = assert(io.open(path, "rb"))
  wrk.body = file:read("*a")
  file:close()
else
  wrk.body = ""
end
wrk.headers["Metadata"] = "true"
wrk.headers["Content-Type"] = "application/json"
dofile(os.getenv("REPORT_LUA"))
