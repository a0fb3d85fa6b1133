-- wrk script: POST increment {"by":1} to one of 10,000 counter entities, chosen at random. With STATEFN_BENCH_AUTH
-- set, it is sent as the Authorization header (bench/auth).
math.randomseed(os.time())
local headers = { ["Content-Type"] = "application/json" }
local auth = os.getenv("STATEFN_BENCH_AUTH")
if auth and auth ~= "" then headers["Authorization"] = auth end
request = function()
  return wrk.format("POST", "/v1/counter/e" .. math.random(1, 10000) .. "/increment", headers, '{"by":1}')
end
