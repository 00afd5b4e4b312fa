// Package backendtest is the conformance suite of backend.Backend: every
// implementation, and decorated stacks of them, must pass RunSuite.
package backendtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// RunSuite checks that the backends made by newBackend keep the promises
// documented on backend.Backend. newBackend is called once per subtest and
// must return an empty backend; the suite closes it. Run it with -race.
func RunSuite(t *testing.T, newBackend func(t *testing.T) backend.Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, backend.Backend)
	}{
		{"PutGetRanges", testPutGetRanges},
		{"Stat", testStat},
		{"Overwrite", testOverwrite},
		{"Delete", testDelete},
		{"Missing", testMissing},
		{"List", testList},
		{"ListMany", testListMany},
		{"NestedNames", testNestedNames},
		{"EmptyObject", testEmptyObject},
		{"LargeObject", testLargeObject},
		{"PutRetrySameReader", testPutRetrySameReader},
		{"FailedPutLeavesNothing", testFailedPut},
		{"Concurrent", testConcurrent},
		{"Cancel", testCancel},
		{"InvalidNames", testInvalidNames},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := newBackend(t)
			t.Cleanup(func() {
				if err := be.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, be)
		})
	}
}

// randBytes returns n pseudo-random bytes determined by seed.
func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)}).Read(b)
	return b
}

func put(t testing.TB, be backend.Backend, name string, data []byte) {
	t.Helper()
	if err := be.Put(t.Context(), name, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", name, len(data), err)
	}
}

// get reads [offset, offset+length) of name; errors from Get and from
// reading are both returned.
func get(ctx context.Context, be backend.Backend, name string, offset, length int64) ([]byte, error) {
	rc, err := be.Get(ctx, name, offset, length)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	return b, err
}

func mustGet(t testing.TB, be backend.Backend, name string, offset, length int64) []byte {
	t.Helper()
	b, err := get(t.Context(), be, name, offset, length)
	if err != nil {
		t.Fatalf("Get(%q, %d, %d): %v", name, offset, length, err)
	}
	return b
}

func checkContent(t testing.TB, be backend.Backend, name string, want []byte) {
	t.Helper()
	if got := mustGet(t, be, name, 0, -1); !bytes.Equal(got, want) {
		t.Fatalf("Get(%q): got %d bytes, want %d bytes (%s)", name, len(got), len(want), diff(got, want))
	}
}

func diff(got, want []byte) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d", i)
		}
	}
	if len(got) != len(want) {
		return "one is a prefix of the other"
	}
	return "equal"
}

func checkNotExist(t testing.TB, err error, what string) {
	t.Helper()
	if !backend.IsNotExist(err) {
		t.Errorf("%s: got error %v, want one wrapping backend.ErrNotExist", what, err)
	}
}

// list returns name → size of the objects under prefix.
func list(t testing.TB, be backend.Backend, prefix string) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	err := be.List(t.Context(), prefix, func(fi backend.Info) error {
		if _, dup := m[fi.Name]; dup {
			t.Errorf("List(%q): %q listed twice", prefix, fi.Name)
		}
		m[fi.Name] = fi.Size
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return m
}

func testPutGetRanges(t *testing.T, be backend.Backend) {
	const name = "data/ab/ab0123456789"
	data := randBytes(1, 10000)
	size := int64(len(data))
	put(t, be, name, data)

	for _, c := range []struct{ off, n int64 }{
		{0, -1}, {0, size}, {0, 1}, {0, 10}, {5000, 100}, {5000, -1},
		{size - 1, 1}, {size - 1, -1}, {0, 0}, {5000, 0}, {size, 0}, {size, -1},
	} {
		n := c.n
		if n < 0 {
			n = size - c.off
		}
		got, err := get(t.Context(), be, name, c.off, c.n)
		if err != nil {
			t.Errorf("Get(%d, %d): %v", c.off, c.n, err)
		} else if want := data[c.off : c.off+n]; !bytes.Equal(got, want) {
			t.Errorf("Get(%d, %d): got %d bytes, want %d (%s)", c.off, c.n, len(got), len(want), diff(got, want))
		}
	}

	for _, c := range []struct{ off, n int64 }{
		{size - 1, 2}, {size, 1}, {size + 1, 0}, {size + 1, -1}, {size + 100, 10}, {0, size + 1},
	} {
		got, err := get(t.Context(), be, name, c.off, c.n)
		if !errors.Is(err, io.ErrUnexpectedEOF) || backend.IsNotExist(err) {
			t.Errorf("Get(%d, %d) past the end of %d bytes: got %d bytes and error %v, want an error wrapping io.ErrUnexpectedEOF",
				c.off, c.n, size, len(got), err)
		}
	}
	if err := backend.ReadRange(t.Context(), be, name, size-1, make([]byte, 2)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadRange past the end: got %v, want an error wrapping io.ErrUnexpectedEOF", err)
	}
	buf := make([]byte, 100)
	if err := backend.ReadRange(t.Context(), be, name, 1234, buf); err != nil || !bytes.Equal(buf, data[1234:1334]) {
		t.Errorf("ReadRange(1234, 100): err %v, equal %v", err, bytes.Equal(buf, data[1234:1334]))
	}
}

func testStat(t *testing.T, be backend.Backend) {
	const name = "index/0001"
	put(t, be, name, randBytes(2, 1234))
	fi, err := be.Stat(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Name != name || fi.Size != 1234 {
		t.Errorf("Stat: got %+v, want name %q, size 1234", fi, name)
	}
	if d := time.Since(fi.ModTime); d < -time.Hour || d > time.Hour {
		t.Errorf("Stat: ModTime %v is not about now", fi.ModTime)
	}
}

func testOverwrite(t *testing.T, be backend.Backend) {
	const name = "locks/lock-1"
	put(t, be, name, randBytes(3, 100))
	b := randBytes(4, 50)
	put(t, be, name, b)
	checkContent(t, be, name, b)
	if fi, err := be.Stat(t.Context(), name); err != nil || fi.Size != 50 {
		t.Errorf("Stat after overwrite: %+v, %v; want size 50", fi, err)
	}
	if got := list(t, be, "locks/"); !maps.Equal(got, map[string]int64{name: 50}) {
		t.Errorf("List after overwrite: %v", got)
	}
}

func testDelete(t *testing.T, be backend.Backend) {
	const name = "data/cd/cdef"
	ctx := t.Context()
	put(t, be, name, []byte("hello"))
	if err := be.Delete(ctx, name); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	_, err := be.Stat(ctx, name)
	checkNotExist(t, err, "Stat after Delete")
	_, err = get(ctx, be, name, 0, -1)
	checkNotExist(t, err, "Get after Delete")
	checkNotExist(t, be.Delete(ctx, name), "second Delete")
	if got := list(t, be, "data/"); len(got) != 0 {
		t.Errorf("List after Delete: %v", got)
	}
	put(t, be, name, []byte("again"))
	checkContent(t, be, name, []byte("again"))
}

func testMissing(t *testing.T, be backend.Backend) {
	ctx := t.Context()
	put(t, be, "data/00/present", []byte("x"))
	for _, name := range []string{"data/00/missing", "nothere/x/y", "data/00/present/below"} {
		_, err := be.Stat(ctx, name)
		checkNotExist(t, err, "Stat "+name)
		_, err = get(ctx, be, name, 0, -1)
		checkNotExist(t, err, "Get "+name)
		_, err = get(ctx, be, name, 1, 2)
		checkNotExist(t, err, "Get range of "+name)
		err = be.Delete(ctx, name)
		checkNotExist(t, err, "Delete "+name)
		if err != nil && !bytes.Contains([]byte(err.Error()), []byte(name)) {
			t.Errorf("Delete %s: error %q does not name the object", name, err)
		}
	}
}

func testList(t *testing.T, be backend.Backend) {
	objs := map[string]int64{
		"config": 10, "keys/k1": 20, "data/ab/ab01": 30, "data/ab/ab02": 40,
		"data/cd/cd01": 50, "index/i1": 60, "index/i2": 0,
	}
	for name, size := range objs {
		put(t, be, name, randBytes(uint64(size), int(size)))
	}
	sub := func(keep ...string) map[string]int64 {
		m := map[string]int64{}
		for _, k := range keep {
			m[k] = objs[k]
		}
		return m
	}
	for _, c := range []struct {
		prefix string
		want   map[string]int64
	}{
		{"", objs},
		{"data/", sub("data/ab/ab01", "data/ab/ab02", "data/cd/cd01")},
		{"data/ab/", sub("data/ab/ab01", "data/ab/ab02")},
		{"data/a", sub("data/ab/ab01", "data/ab/ab02")},
		{"index/", sub("index/i1", "index/i2")},
		{"keys/", sub("keys/k1")},
		{"snapshots/", sub()},
		{"data/zz/", sub()},
		{"config/", sub()},
	} {
		if got := list(t, be, c.prefix); !maps.Equal(got, c.want) {
			t.Errorf("List(%q): got %v, want %v", c.prefix, got, c.want)
		}
	}

	errStop := errors.New("stop")
	calls := 0
	err := be.List(t.Context(), "", func(backend.Info) error { calls++; return errStop })
	if !errors.Is(err, errStop) || calls != 1 {
		t.Errorf("List with failing fn: got %v after %d calls, want errStop after 1", err, calls)
	}
}

func testListMany(t *testing.T, be backend.Backend) {
	const n = 1100 // S3 lists 1000 keys per page
	names := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for name := range names {
				if err := be.Put(t.Context(), name, bytes.NewReader([]byte(name)), int64(len(name))); err != nil {
					t.Errorf("Put %s: %v", name, err)
				}
			}
		})
	}
	for i := range n {
		names <- fmt.Sprintf("data/ff/ff%06d", i)
	}
	close(names)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	put(t, be, "data/fe/fe000000", []byte("x"))
	put(t, be, "index/x", []byte("y"))

	got := list(t, be, "data/ff/")
	if len(got) != n {
		t.Errorf("List(data/ff/): %d objects, want %d", len(got), n)
	}
	for i := range n {
		name := fmt.Sprintf("data/ff/ff%06d", i)
		if got[name] != int64(len(name)) {
			t.Fatalf("List(data/ff/): %s has size %d, want %d", name, got[name], len(name))
		}
	}
	if got := list(t, be, "data/"); len(got) != n+1 {
		t.Errorf("List(data/): %d objects, want %d", len(got), n+1)
	}
	if got := list(t, be, ""); len(got) != n+2 {
		t.Errorf("List(\"\"): %d objects, want %d", len(got), n+2)
	}

	errStop := errors.New("stop")
	calls := 0
	err := be.List(t.Context(), "data/ff/", func(backend.Info) error {
		if calls++; calls == 1050 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) || calls != 1050 {
		t.Errorf("List stopped on the 2nd page: got %v after %d calls, want errStop after 1050", err, calls)
	}
}

func testNestedNames(t *testing.T, be backend.Backend) {
	names := []string{
		"a/b/c/d/e/f/g/h/i",
		"a/b/c/d/e/f/g/h/j",
		"a/b/c/x",
		"a/b.c/d-e_f~g.h",
		"a/with space/plus+equals=comma,",
		"snapshots/2026/11/25/host-1.point",
	}
	for _, name := range names {
		put(t, be, name, []byte(name))
	}
	for _, name := range names {
		checkContent(t, be, name, []byte(name))
		if fi, err := be.Stat(t.Context(), name); err != nil || fi.Name != name {
			t.Errorf("Stat(%q): %+v, %v", name, fi, err)
		}
	}
	all := list(t, be, "")
	if len(all) != len(names) {
		t.Errorf("List: got %v, want %v", all, names)
	}
	for _, name := range names {
		if all[name] != int64(len(name)) {
			t.Errorf("List: %q missing or wrong size in %v", name, all)
		}
	}
	if got := list(t, be, "a/b/c/d/"); len(got) != 2 {
		t.Errorf("List(a/b/c/d/): %v, want 2 objects", got)
	}
	if got := list(t, be, "a/"); len(got) != 5 {
		t.Errorf("List(a/): %v, want 5 objects", got)
	}
}

func testEmptyObject(t *testing.T, be backend.Backend) {
	const name = "index/empty"
	put(t, be, name, nil)
	if fi, err := be.Stat(t.Context(), name); err != nil || fi.Size != 0 {
		t.Errorf("Stat: %+v, %v; want size 0", fi, err)
	}
	for _, n := range []int64{-1, 0} {
		if got, err := get(t.Context(), be, name, 0, n); err != nil || len(got) != 0 {
			t.Errorf("Get(0, %d): %d bytes, %v; want 0 bytes", n, len(got), err)
		}
	}
	for _, c := range []struct{ off, n int64 }{{0, 1}, {1, -1}, {1, 0}} {
		if _, err := get(t.Context(), be, name, c.off, c.n); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("Get(%d, %d) of an empty object: got %v, want io.ErrUnexpectedEOF", c.off, c.n, err)
		}
	}
	if got := list(t, be, "index/"); !maps.Equal(got, map[string]int64{name: 0}) {
		t.Errorf("List: %v", got)
	}
}

func testLargeObject(t *testing.T, be backend.Backend) {
	const name = "data/ee/large"
	data := randBytes(5, 17<<20+3) // past S3's 16 MiB single-PUT size in minio-go
	size := int64(len(data))
	put(t, be, name, data)
	checkContent(t, be, name, data)
	for _, c := range []struct{ off, n int64 }{{16<<20 - 10, 20}, {size - 5, -1}, {1 << 20, 4 << 20}} {
		n := c.n
		if n < 0 {
			n = size - c.off
		}
		if got := mustGet(t, be, name, c.off, c.n); !bytes.Equal(got, data[c.off:c.off+n]) {
			t.Errorf("Get(%d, %d): wrong data (%s)", c.off, c.n, diff(got, data[c.off:c.off+n]))
		}
	}
	// Close a reader after reading only a little of it.
	rc, err := be.Get(t.Context(), name, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := io.ReadFull(rc, buf); err != nil || !bytes.Equal(buf, data[:4096]) {
		t.Errorf("partial read: %v", err)
	}
	if err := rc.Close(); err != nil {
		t.Errorf("Close after partial read: %v", err)
	}
	if fi, err := be.Stat(t.Context(), name); err != nil || fi.Size != size {
		t.Errorf("Stat: %+v, %v; want size %d", fi, err, size)
	}
}

var errReader = errors.New("injected reader failure")

// faultyReader fails once (or every time, if always) when a read reaches
// failAt bytes. It passes Seek through.
type faultyReader struct {
	r      *bytes.Reader
	failAt int64
	always bool
	failed bool
}

func (f *faultyReader) Read(p []byte) (int, error) {
	pos := f.r.Size() - int64(f.r.Len())
	if !f.failed || f.always {
		if pos >= f.failAt {
			f.failed = true
			return 0, errReader
		}
		p = p[:min(int64(len(p)), f.failAt-pos)]
	}
	return f.r.Read(p)
}

func (f *faultyReader) Seek(off int64, whence int) (int64, error) { return f.r.Seek(off, whence) }

func testPutRetrySameReader(t *testing.T, be backend.Backend) {
	const name = "data/12/retried"
	ctx := t.Context()
	data := randBytes(6, 300_000)
	r := &faultyReader{r: bytes.NewReader(data), failAt: 100_000}
	// A retrying backend may replay the reader itself and succeed.
	if err := be.Put(ctx, name, r, int64(len(data))); err != nil {
		_, err := be.Stat(ctx, name)
		checkNotExist(t, err, "Stat after failed Put")
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		if err := be.Put(ctx, name, r, int64(len(data))); err != nil {
			t.Fatalf("Put retried after Seek: %v", err)
		}
	}
	checkContent(t, be, name, data)
	// The same reader once more, for another name.
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if err := be.Put(ctx, name+"-2", r, int64(len(data))); err != nil {
		t.Fatalf("Put with a reused reader: %v", err)
	}
	checkContent(t, be, name+"-2", data)
}

func testFailedPut(t *testing.T, be backend.Backend) {
	ctx := t.Context()
	old := randBytes(7, 200_000)
	put(t, be, "data/ab/keep", old)
	b := randBytes(8, 200_000)

	// A failed overwrite keeps the old object.
	r := &faultyReader{r: bytes.NewReader(b), failAt: 100_000, always: true}
	if err := be.Put(ctx, "data/ab/keep", r, int64(len(b))); err == nil {
		t.Fatal("overwriting Put with a failing reader succeeded")
	}
	checkContent(t, be, "data/ab/keep", old)

	// A failed Put of a new object leaves nothing.
	r = &faultyReader{r: bytes.NewReader(b), failAt: 100_000, always: true}
	if err := be.Put(ctx, "data/ab/new", r, int64(len(b))); err == nil {
		t.Fatal("Put with a failing reader succeeded")
	}
	// A reader shorter than size fails too.
	if err := be.Put(ctx, "data/ab/short", bytes.NewReader(b[:1000]), 2000); err == nil {
		t.Fatal("Put with a reader shorter than size succeeded")
	}
	for _, name := range []string{"data/ab/new", "data/ab/short"} {
		_, err := be.Stat(ctx, name)
		checkNotExist(t, err, "Stat after failed Put of "+name)
	}
	if got := list(t, be, ""); !maps.Equal(got, map[string]int64{"data/ab/keep": int64(len(old))}) {
		t.Errorf("List after failed Puts: %v, want only data/ab/keep", got)
	}
}

func testConcurrent(t *testing.T, be backend.Backend) {
	const shared = "locks/shared"
	a, b := randBytes(10, 64<<10), randBytes(11, 64<<10)
	put(t, be, shared, a)
	ctx := t.Context()
	var wg sync.WaitGroup
	wg.Go(func() { // overwrite shared while others read it
		for i := range 20 {
			data := a
			if i%2 == 0 {
				data = b
			}
			if err := be.Put(ctx, shared, bytes.NewReader(data), int64(len(data))); err != nil {
				t.Errorf("Put %s: %v", shared, err)
			}
		}
	})
	for w := range 8 {
		wg.Go(func() {
			prefix := fmt.Sprintf("data/%02x/", w)
			for i := range 10 {
				name := fmt.Sprintf("%sw%d-%d", prefix, w, i)
				data := randBytes(uint64(100*w+i), 1000+w*100+i)
				if err := be.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
					t.Errorf("Put %s: %v", name, err)
					return
				}
				if got, err := get(ctx, be, name, 0, -1); err != nil || !bytes.Equal(got, data) {
					t.Errorf("Get %s: %v (%s)", name, err, diff(got, data))
				}
				if got, err := get(ctx, be, name, 10, 20); err != nil || !bytes.Equal(got, data[10:30]) {
					t.Errorf("Get %s [10,+20): %v", name, err)
				}
				if fi, err := be.Stat(ctx, name); err != nil || fi.Size != int64(len(data)) {
					t.Errorf("Stat %s: %+v, %v", name, fi, err)
				}
				if got, err := get(ctx, be, shared, 0, -1); err != nil || !(bytes.Equal(got, a) || bytes.Equal(got, b)) {
					t.Errorf("Get %s during overwrites: %d bytes, %v; want one whole version", shared, len(got), err)
				}
				n := 0
				if err := be.List(ctx, prefix, func(backend.Info) error { n++; return nil }); err != nil || n != i+1 {
					t.Errorf("List %s: %d objects, %v; want %d", prefix, n, err, i+1)
				}
			}
		})
	}
	wg.Wait()
}

func testCancel(t *testing.T, be backend.Backend) {
	const name = "data/ab/x"
	data := randBytes(12, 1000)
	put(t, be, name, data)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: got %v, want an error wrapping context.Canceled", what, err)
		}
	}
	check("Put", be.Put(ctx, "data/ab/y", bytes.NewReader(data), int64(len(data))))
	_, err := get(ctx, be, name, 0, -1)
	check("Get", err)
	_, err = be.Stat(ctx, name)
	check("Stat", err)
	check("Delete", be.Delete(ctx, name))
	check("List", be.List(ctx, "", func(backend.Info) error { return nil }))

	_, err = be.Stat(t.Context(), "data/ab/y")
	checkNotExist(t, err, "Stat after cancelled Put")
	checkContent(t, be, name, data)

	// Cancelled while Put reads its data.
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	big := randBytes(13, 4<<20)
	r := &cancelReader{r: bytes.NewReader(big), cancel: cancel, at: 1 << 20}
	check("Put cancelled midway", be.Put(ctx, "data/ab/z", r, int64(len(big))))
	_, err = be.Stat(t.Context(), "data/ab/z")
	checkNotExist(t, err, "Stat after Put cancelled midway")
}

// cancelReader calls cancel once at bytes have been read.
type cancelReader struct {
	r      *bytes.Reader
	cancel func()
	at     int64
}

func (c *cancelReader) Read(p []byte) (int, error) {
	if c.r.Size()-int64(c.r.Len()) >= c.at {
		c.cancel()
	}
	return c.r.Read(p)
}

func (c *cancelReader) Seek(off int64, whence int) (int64, error) { return c.r.Seek(off, whence) }

func testInvalidNames(t *testing.T, be backend.Backend) {
	ctx := t.Context()
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, backend.ErrInvalidName) || backend.IsNotExist(err) {
			t.Errorf("%s: got %v, want an error wrapping backend.ErrInvalidName", what, err)
		}
	}
	for _, name := range []string{"", "/abs", "a//b", "a/", "../x", "a/../b", "./a", "a/.", "..", "a\\b"} {
		check(fmt.Sprintf("Put(%q)", name), be.Put(ctx, name, bytes.NewReader([]byte("x")), 1))
		_, err := be.Get(ctx, name, 0, -1)
		check(fmt.Sprintf("Get(%q)", name), err)
		_, err = be.Stat(ctx, name)
		check(fmt.Sprintf("Stat(%q)", name), err)
		check(fmt.Sprintf("Delete(%q)", name), be.Delete(ctx, name))
	}
	for _, prefix := range []string{"/", "../", "/data/", "a//", "a/../"} {
		check(fmt.Sprintf("List(%q)", prefix), be.List(ctx, prefix, func(backend.Info) error { return nil }))
	}
	if got := list(t, be, ""); len(got) != 0 {
		t.Errorf("List after invalid Puts: %v", slices.Collect(maps.Keys(got)))
	}
}
