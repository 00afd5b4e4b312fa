// Package retention decides which recovery points of one protected machine
// to keep. It is pure: no I/O and no clock; the caller passes the current
// time.
//
// # Policy expressions
//
// A policy is a comma-separated list of terms, for example
//
//	1h:all,24h:5m,72h:1h,keep-app=15d,keep-last=3
//
// The terms are:
//
//	SPAN:all           keep every point of the band (see below)
//	SPAN:INTERVAL      keep one point per INTERVAL in the band
//	keep-app=DURATION  keep every app-consistent point younger than DURATION
//	keep-last=N        keep the N newest points whatever their age (default 1)
//
// A duration is one or more NUMBER UNIT pairs with no sign and no spaces:
// 90m, 36h, 1d12h, 1.5h. Units are ns, us (or µs), ms, s, m, h, d (24h) and
// w (7d). Spaces around terms are ignored. Term order matters only among
// SPAN:INTERVAL terms; Policy.String writes the grid terms first, then
// keep-app, then keep-last (omitted when it is 1).
//
// Parse rejects, naming the offending term:
//
//   - an empty expression, an empty term, or an unknown term;
//   - a span or interval that is not a positive duration, and durations
//     that overflow (about 292 years);
//   - spans that do not strictly increase from one grid term to the next;
//   - an interval longer than its band, that is longer than its span minus
//     the previous span (the first term's band starts at 0);
//   - an interval that is not a whole multiple of the previous grid term's
//     interval (e.g. 1w after 1d is fine, 30d after 1w is not: use 4w);
//   - "all" after a grid term with an interval;
//   - keep-app that is not a positive duration, keep-last that is not a
//     whole number of at least 1, and either of them given twice.
//
// The rules on intervals and "all" are what makes retention stable (see
// below).
//
// # Semantics
//
// Each point has an age: now minus the point's time. A point falls into the
// band of the first grid term whose SPAN is greater than its age; so a term's
// band holds the ages from the previous span (inclusive, 0 for the first term)
// to its own span (exclusive). In a SPAN:all band every point is kept. A
// SPAN:INTERVAL band divides time into buckets of length INTERVAL aligned to
// the Unix epoch (bucket = floor(Unix time / INTERVAL), so days start at
// 00:00 UTC and weeks on Thursdays at 00:00 UTC); a point of the band is kept
// if it is the oldest point of the whole series in its bucket. Equivalently,
// each bucket keeps its oldest point while that point is in the band; once
// that point has aged past the band's span, the bucket keeps nothing more in
// this band (younger points of the bucket are not promoted). Points as old as
// the last span or older are not kept by the grid. Independently, keep-app
// keeps every app-consistent point whose age is less than its duration, and
// keep-last keeps the N newest points that are not in the future, whatever
// their age. A point kept for any reason is kept, and its decision lists every
// reason. A point whose time is after now (clock skew) is always kept, with
// that as its only reason; it does not count for keep-last. Points with
// equal times are ordered by ID: the smaller ID counts as the older.
//
// # Stability
//
// Retention runs again and again, each run deleting what the previous ones
// forgot; what it keeps must not depend on that history. Keeping the oldest
// point of each bucket, and the rules above, make it so: a point that one run
// forgets, every later run would forget too, even over all the points ever
// taken. Precisely, after every run the surviving points include every point
// that a single Apply over all the points ever given to Apply would keep, and
// are exactly those points if each run is given all the points taken before
// it (nothing arrives late). Each rule matters: with an interval longer than
// its band, survivors include points that a single run would not keep; with
// intervals that do not nest, or "all" after a thinned band, points are
// deleted that a single run would keep. So would keeping the oldest point of
// the band rather than of the series: once a bucket's oldest point has aged
// out, a single run would keep the bucket's next point, long since deleted.
package retention
