-- POST the JSON body named by BENCH_BODY; with BENCH_LIMIT set, each wrk thread stops after that many
-- responses (used to drive an exact number of calls for the memory measurement).
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local count = 0

if limit > 0 then
  function response(status, headers, body)
    count = count + 1
    if count >= limit then
      wrk.thread:stop()
    end
  end
end
