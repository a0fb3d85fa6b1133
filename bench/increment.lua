-- wrk script: POST increment {"by":1} to one of STATEFN_BENCH_ENTITIES (10,000) entities of STATEFN_BENCH_FUNCTION
-- (counter) named STATEFN_BENCH_PREFIX (e) and a number, chosen at random. With STATEFN_BENCH_AUTH set, it is sent as
-- the Authorization header (bench/auth).
math.randomseed(os.time())
local headers = { ["Content-Type"] = "application/json" }
local auth = os.getenv("STATEFN_BENCH_AUTH")
if auth and auth ~= "" then headers["Authorization"] = auth end
local entities = tonumber(os.getenv("STATEFN_BENCH_ENTITIES") or "10000")
local base = "/v1/" .. (os.getenv("STATEFN_BENCH_FUNCTION") or "counter") .. "/" .. (os.getenv("STATEFN_BENCH_PREFIX") or "e")
request = function()
  return wrk.format("POST", base .. math.random(1, entities) .. "/increment", headers, '{"by":1}')
end
