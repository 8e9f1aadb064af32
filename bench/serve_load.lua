-- wrk script for bench/serve_load.sh: a mix of valid and invalid requests, status codes counted
-- per class (wrk runs for a duration; the script sizes it for the request count). Environment:
--   LOAD_IMAGE  a PNG to embed
--   LOAD_MIX    "mixed" (1/3 invalid) or "images" (valid image embeds only)
local image = io.open(os.getenv("LOAD_IMAGE"), "rb"):read("*a")
local mix = os.getenv("LOAD_MIX") or "mixed"
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  sent, done_n, s2xx, s4xx, s503, s5xx, other = 0, 0, 0, 0, 0, 0, 0
end

local bodies = {
  { "POST", "/v1/embed/image", { ["Content-Type"] = "image/png" }, image },
  { "POST", "/v1/embed/text", { ["Content-Type"] = "application/json" }, '["No pleural effusion or pneumothorax.", "Mild cardiomegaly."]' },
  -- invalid: a truncated PNG, an empty text, the wrong content type
  { "POST", "/v1/embed/image", { ["Content-Type"] = "image/png" }, image:sub(1, math.floor(#image / 2)) },
  { "POST", "/v1/embed/text", { ["Content-Type"] = "application/json" }, '["   "]' },
  { "POST", "/v1/embed/image", { ["Content-Type"] = "application/json" }, '{"image": 1}' },
  { "POST", "/v1/zero-shot?prompts=chexpert5", { ["Content-Type"] = "image/png" }, image },
}

-- 9 requests in turn: 6 valid (3 image embeds, 2 text embeds, 1 zero-shot), 3 invalid.
local schedule = { 1, 2, 3, 1, 6, 4, 1, 2, 5 }

function request()
  sent = sent + 1
  local b = bodies[1]
  if mix ~= "images" then b = bodies[schedule[(sent % #schedule) + 1]] end
  return wrk.format(b[1], b[2], b[3], b[4])
end

function response(status, headers, body)
  done_n = done_n + 1
  if status >= 200 and status < 300 then s2xx = s2xx + 1
  elseif status == 503 then s503 = s503 + 1
  elseif status >= 400 and status < 500 then s4xx = s4xx + 1
  elseif status >= 500 then s5xx = s5xx + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local t = { n = 0, s2xx = 0, s4xx = 0, s503 = 0, s5xx = 0, other = 0 }
  for _, th in ipairs(threads) do
    t.n = t.n + th:get("done_n")
    t.s2xx = t.s2xx + th:get("s2xx")
    t.s4xx = t.s4xx + th:get("s4xx")
    t.s503 = t.s503 + th:get("s503")
    t.s5xx = t.s5xx + th:get("s5xx")
    t.other = t.other + th:get("other")
  end
  io.write(string.format(
    '{"responses": %d, "2xx": %d, "4xx": %d, "503": %d, "5xx_other": %d, "other": %d, "socket_errors": %d, ' ..
    '"seconds": %.3f, "requests_per_s": %.1f, "p50_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f}\n',
    t.n, t.s2xx, t.s4xx, t.s503, t.s5xx, t.other,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration / 1e6, t.n / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
