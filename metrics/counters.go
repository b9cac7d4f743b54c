package metrics

import "github.com/prometheus/client_golang/prometheus"

// counters is the collector of the key cache and volume counters: both
// keep their own (atomic) counts, so they are read once per scrape, as one
// snapshot, rather than mirrored into Prometheus counters on every event.
type counters struct {
	s *Set

	kmsCalls, evictions     *prometheus.Desc
	cacheEntries, prefetch  *prometheus.Desc
	hits, misses, coalesced *prometheus.Desc
	graceHits               *prometheus.Desc
	prefetches, prefUsed    *prometheus.Desc
	prefUnused              *prometheus.Desc
	bytesRead, bytesWritten *prometheus.Desc
	filesCreated, opened    *prometheus.Desc
	errors, authFailures    *prometheus.Desc
}

func newCounters(s *Set) *counters {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &counters{
		s:            s,
		kmsCalls:     d("kmsfs_kms_calls_total", "KMS calls by operation and result.", "operation", "result"),
		evictions:    d("kmsfs_cache_evictions_total", "Key cache evictions by reason.", "reason"),
		cacheEntries: d("kmsfs_cache_entries", "Keys in the key cache."),
		prefetch:     d("kmsfs_prefetched_keys", "Data keys waiting in the per-object prefetch pool."),
		hits:         d("kmsfs_cache_hits_total", "Data key lookups served from the key cache."),
		misses:       d("kmsfs_cache_misses_total", "Data key lookups that needed the KMS."),
		coalesced:    d("kmsfs_cache_coalesced_total", "Misses that shared another caller's KMS call."),
		graceHits:    d("kmsfs_cache_grace_hits_total", "Expired keys served while the KMS was unreachable."),
		prefetches:   d("kmsfs_key_prefetches_total", "Speculative KMS Decrypts: keys unwrapped ahead of a reader."),
		prefUsed:     d("kmsfs_key_prefetches_used_total", "Keys unwrapped ahead of a reader that a reader then used."),
		prefUnused:   d("kmsfs_key_prefetches_unused_total", "Keys unwrapped ahead of a reader that left the cache unused."),
		bytesRead:    d("kmsfs_bytes_read_total", "Plaintext bytes read."),
		bytesWritten: d("kmsfs_bytes_written_total", "Plaintext bytes written."),
		filesCreated: d("kmsfs_files_created_total", "Files that got a new data key."),
		opened:       d("kmsfs_files_opened_total", "File opens."),
		errors:       d("kmsfs_errors_total", "Failures reported to applications (EIO, EACCES)."),
		authFailures: d("kmsfs_auth_failures_total", "Blocks, headers or xattr values that failed authentication."),
	}
}

func (c *counters) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.kmsCalls, c.evictions, c.cacheEntries, c.prefetch, c.hits, c.misses,
		c.coalesced, c.graceHits, c.prefetches, c.prefUsed, c.prefUnused, c.bytesRead, c.bytesWritten, c.filesCreated, c.opened, c.errors, c.authFailures} {
		ch <- d
	}
}

func (c *counters) Collect(ch chan<- prometheus.Metric) {
	cache, vol := c.s.attached()
	if cache == nil || vol == nil {
		return // not attached yet: nothing to report
	}
	cs, vs := cache.Stats(), vol.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for op, results := range cs.KMSCalls {
		for r, n := range results {
			counter(c.kmsCalls, n, op, r)
		}
	}
	for _, e := range []struct {
		reason string
		v      uint64
	}{{"age", cs.Evictions.Age}, {"uses", cs.Evictions.Uses}, {"bytes", cs.Evictions.Bytes}, {"capacity", cs.Evictions.Capacity}, {"explicit", cs.Evictions.Explicit}} {
		counter(c.evictions, e.v, e.reason)
	}
	counter(c.hits, cs.Hits)
	counter(c.misses, cs.Misses)
	counter(c.coalesced, cs.Coalesced)
	counter(c.graceHits, cs.GraceHits)
	counter(c.prefetches, cs.Prefetches)
	counter(c.prefUsed, cs.PrefetchUsed)
	counter(c.prefUnused, cs.PrefetchUnused)
	counter(c.bytesRead, vs.BytesRead)
	counter(c.bytesWritten, vs.BytesWritten)
	counter(c.filesCreated, vs.FilesCreated)
	counter(c.opened, vs.FilesOpened)
	counter(c.errors, vs.Errors)
	counter(c.authFailures, vs.AuthFailures)
	ch <- prometheus.MustNewConstMetric(c.cacheEntries, prometheus.GaugeValue, float64(cs.Entries))
	ch <- prometheus.MustNewConstMetric(c.prefetch, prometheus.GaugeValue, float64(vs.PrefetchedKeys))
}
