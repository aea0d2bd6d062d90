-- bench/wrk_raw_latency.lua — wrk script (wrk -s) that prints latency percentiles WITHOUT
-- wrk's coordinated-omission correction. Used by the `slow` test of bench/compare.sh.
--
-- wrk 4.x "corrects" its latency histogram before printing it (stats_correct() in wrk.c):
-- with e = run time ÷ (requests ÷ connections), the mean time between two requests on one
-- connection, every recorded latency n ≥ 2e also adds synthetic samples at n − e, n − 2e, …
-- (all > e), the requests a constant-rate client would have queued behind it. When a few
-- requests are far slower than e — 0.3% of them waiting 20 ms while e ≈ 1 ms — each brings
-- ~20 synthetic samples, and wrk's p99 shows the slow requests although 99% of the real
-- ones were fast. This script undoes the correction from the top of the histogram down:
--   raw(m) = corrected(m) − Σ_{k≥1} raw(m + k·e)   for m > e;   raw(m) = corrected(m) otherwise
-- and prints, with wrk's own percentile rule:
--   raw n N          requests in the raw histogram (should equal wrk's request count)
--   raw interval E   e in µs
--   raw p50 US / raw p99 US
-- or `raw n/a REASON` when it cannot. Needs WRK_CONNECTIONS (the -c value) in the environment.

local conns = tonumber(os.getenv("WRK_CONNECTIONS") or "")

done = function(summary, latency, _)
    local per_conn = conns and math.floor(summary.requests / conns) or 0
    if per_conn == 0 then
        io.write("raw n/a no WRK_CONNECTIONS or no requests\n")
        return
    end
    local e = math.floor(summary.duration / per_conn)
    local vals, corrected = {}, {}
    for i = 1, #latency do
        local v, c = latency(i)
        vals[i] = v
        corrected[v] = c
    end
    -- chain[m] = raw(m) + raw(m + e) + raw(m + 2e) + …  (every link with raw > 0 has a
    -- corrected entry, because it added samples to all the links below it).
    local raw, chain, total = {}, {}, 0
    for i = #vals, 1, -1 do
        local m = vals[i]
        local above = chain[m + e] or 0
        local r = corrected[m]
        if m > e then
            r = r - above
        end
        if r < 0 then
            io.write(string.format("raw n/a histogram does not invert (at %d us)\n", m))
            return
        end
        raw[m] = r
        chain[m] = r + above
        total = total + r
    end
    io.write(string.format("raw n %d\nraw interval %d\n", total, e))
    for _, p in ipairs({ 50, 99 }) do
        local rank = math.floor(p / 100 * total + 1) -- wrk: round(p / 100 * count + 0.5)
        local seen = 0
        for i = 1, #vals do
            seen = seen + raw[vals[i]]
            if seen >= rank then
                io.write(string.format("raw p%d %d\n", p, vals[i]))
                break
            end
        end
    end
end
