package ingest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

type rawAnswer struct {
	status int
	body   []byte
	eb     api.ErrorBody
}

func raw(t *testing.T, url, machine, method, path, ctype string, body []byte) rawAnswer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if machine != "" {
		req.Header.Set("X-Machine", machine)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := rawAnswer{status: resp.StatusCode, body: b}
	if resp.StatusCode >= 400 {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s %s: error answer of type %q: %s", method, path, ct, b)
		}
		if err := json.Unmarshal(b, &a.eb); err != nil || a.eb.Error.Code == "" || a.eb.Error.Message == "" {
			t.Fatalf("%s %s: error answer is not an api.ErrorBody: %s", method, path, b)
		}
	}
	return a
}

func expect(t *testing.T, what string, a rawAnswer, status int, code string) {
	t.Helper()
	if a.status != status || (code != "" && a.eb.Error.Code != code) {
		t.Fatalf("%s: HTTP %d %s (%s), want %d %s", what, a.status, a.eb.Error.Code, a.eb.Error.Message, status, code)
	}
}

// TestHostileHTTP sends malformed, forged and misdirected requests; each
// gets a clear 4xx api.ErrorBody and stores nothing.
func TestHostileHTTP(t *testing.T) {
	ctx := testCtx(t)
	v, vdir := newVault(t, bs, 1<<20)
	srv, hs, _ := startServer(t, v, t.TempDir(), nil)
	u := hs.URL
	r := rand.New(rand.NewPCG(21, 22))

	// A real point of another machine, to use as a forged base.
	other := newDisk(t, t.TempDir(), "vda", randomImage(r, 64<<10))
	ores, err := runCycle(ctx, newClient(t, u, "other"), "other", []*testDisk{other}, nil)
	if err != nil {
		t.Fatal(err)
	}

	sp := hostileOpen(t, u, ores.Point)
	hostileHave(t, u, sp)
	blk := hostileBatches(t, srv, u, sp, vdir, r)

	// A clean session through the client still publishes a good point.
	c := newClient(t, u, "m")
	sess, err := c.Open(ctx, wire.SessionRequest{Machine: "m", Disks: []wire.SessionDisk{{Name: "vda", Size: 3 * bs, Driver: "scan"}}})
	if err != nil {
		t.Fatal(err)
	}
	for k := range 3 {
		if err := sess.Put(ctx, "vda", capture.Block{Index: int64(k), Data: blk}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := sess.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.SentBytes != 0 || res.DedupBytes != 3*bs {
		t.Fatalf("sent %d, dedup %d", res.SentBytes, res.DedupBytes)
	}
	checkPoint(t, openVault(t, vdir), res.Point, "m", []*testDisk{{name: "vda", img: bytes.Repeat(blk, 3)}})
	// A retried commit gets the same answer.
	cr := raw(t, u, "m", "POST", "/ingest/v1/sessions/"+sess.ID()+"/commit", "application/json", []byte(`{"batches":1}`))
	if cr.status != 200 || !strings.Contains(string(cr.body), res.Point) {
		t.Fatalf("retried commit: %d %s", cr.status, cr.body)
	}
}

// hostileOpen sends the malformed and forged opens (otherPoint is a point
// of machine "other") and opens a real session of machine "m" on a disk
// of 10 blocks and 100 bytes; it returns the session's path.
func hostileOpen(t *testing.T, u, otherPoint string) string {
	open := func(machine string, req any) rawAnswer {
		b, _ := json.Marshal(req)
		return raw(t, u, machine, "POST", "/ingest/v1/sessions", "application/json", b)
	}
	disk := []wire.SessionDisk{{Name: "vda", Size: 10*bs + 100}}
	expect(t, "no certificate", raw(t, u, "", "GET", "/ingest/v1/info", "", nil), 401, api.CodeUnauthenticated)
	expect(t, "invalid machine name", raw(t, u, "a b", "GET", "/ingest/v1/info", "", nil), 403, api.CodeForbidden)
	expect(t, "unknown endpoint", raw(t, u, "m", "GET", "/ingest/v1/nothing", "", nil), 404, api.CodeNotFound)
	expect(t, "wrong machine", open("m", wire.SessionRequest{Machine: "other", Disks: disk}), 403, api.CodeForbidden)
	expect(t, "malformed JSON", raw(t, u, "m", "POST", "/ingest/v1/sessions", "application/json", []byte(`{"disks":[`)), 400, api.CodeBadRequest)
	expect(t, "trailing JSON", raw(t, u, "m", "POST", "/ingest/v1/sessions", "application/json", []byte(`{} {}`)), 400, api.CodeBadRequest)
	expect(t, "huge JSON", raw(t, u, "m", "POST", "/ingest/v1/sessions", "application/json", []byte(`{"labels":{"a":"`+strings.Repeat("x", 2<<20)+`"}}`)), 400, api.CodeBadRequest)
	expect(t, "no disks", open("m", wire.SessionRequest{}), 400, api.CodeBadRequest)
	expect(t, "bad disk name", open("m", wire.SessionRequest{Disks: []wire.SessionDisk{{Name: "../x", Size: 1}}}), 400, api.CodeBadRequest)
	expect(t, "disk twice", open("m", wire.SessionRequest{Disks: append(disk, disk...)}), 400, api.CodeBadRequest)
	expect(t, "negative size", open("m", wire.SessionRequest{Disks: []wire.SessionDisk{{Name: "vda", Size: -1}}}), 400, api.CodeBadRequest)
	expect(t, "bad kind", open("m", wire.SessionRequest{Kind: "warm", Disks: disk}), 400, api.CodeBadRequest)
	expect(t, "bad group", open("m", wire.SessionRequest{Group: "g/1", Disks: disk}), 400, api.CodeBadRequest)
	expect(t, "bad base", open("m", wire.SessionRequest{Disks: []wire.SessionDisk{{Name: "vda", Size: 1, Base: "xyz"}}}), 400, api.CodeBadRequest)
	expect(t, "missing base", open("m", wire.SessionRequest{Disks: []wire.SessionDisk{{Name: "vda", Size: 1, Base: strings.Repeat("ab", 32)}}}), 409, api.CodeStale)
	expect(t, "base of another machine", open("m", wire.SessionRequest{Disks: []wire.SessionDisk{{Name: "vda", Size: 1, Base: otherPoint}}}), 403, api.CodeForbidden)
	expect(t, "base lacking the disk", open("other", wire.SessionRequest{Disks: []wire.SessionDisk{{Name: "vdz", Size: 1, Base: otherPoint}}}), 409, api.CodeStale)

	// A real session.
	a := open("m", wire.SessionRequest{Machine: "m", Disks: disk})
	expect(t, "open", a, 200, "")
	var or wire.OpenResponse
	if err := json.Unmarshal(a.body, &or); err != nil {
		t.Fatal(err)
	}
	sp := "/ingest/v1/sessions/" + or.Session
	for _, p := range []string{"/have", "/batches", "/commit"} {
		expect(t, "unknown session "+p, raw(t, u, "m", "POST", "/ingest/v1/sessions/nope"+p, wire.ContentTypeBatch, []byte("x")), 404, api.CodeNotFound)
		expect(t, "another machine's session "+p, raw(t, u, "other", "POST", sp+p, wire.ContentTypeBatch, []byte("x")), 403, api.CodeForbidden)
	}
	expect(t, "unknown session delete", raw(t, u, "m", "DELETE", "/ingest/v1/sessions/nope", "", nil), 404, api.CodeNotFound)
	expect(t, "another machine's delete", raw(t, u, "other", "DELETE", sp, "", nil), 403, api.CodeForbidden)

	return sp
}

// hostileHave sends malformed have requests to the session at sp.
func hostileHave(t *testing.T, u, sp string) {
	have, _ := wire.EncodeHave(nil, []vault.ID{{1}, {2}})
	expect(t, "truncated have", raw(t, u, "m", "POST", sp+"/have", wire.ContentTypeHave, have[:len(have)-3]), 400, api.CodeBadRequest)
	expect(t, "have wrong tag", raw(t, u, "m", "POST", sp+"/have", wire.ContentTypeHave, append([]byte("XXXX"), have[4:]...)), 400, api.CodeBadRequest)
	hv := bytes.Clone(have)
	hv[3] = 9
	expect(t, "have wrong version", raw(t, u, "m", "POST", sp+"/have", wire.ContentTypeHave, hv), 400, api.CodeBadRequest)
	expect(t, "have too large", raw(t, u, "m", "POST", sp+"/have", wire.ContentTypeHave, make([]byte, wire.MaxHaveBody+1)), 413, api.CodeTooLarge)
	ok := raw(t, u, "m", "POST", sp+"/have", wire.ContentTypeHave, have)
	if bits, err := wire.DecodeHaveReply(ok.body, 2); ok.status != 200 || err != nil || bits[0] || bits[1] {
		t.Fatalf("have: %d %v %v", ok.status, bits, err)
	}

}

// hostileBatches sends malformed and forged batches to the session at sp,
// checks nothing of them was stored, then fails the session by a batch
// out of order. It returns the block of its one good batch.
func hostileBatches(t *testing.T, srv *Server, u, sp, vdir string, r *rand.Rand) []byte {
	h := vault.NewBlockHasher(srv.v.BlockKey())
	blk := make([]byte, bs)
	for i := range blk {
		blk[i] = byte(r.Uint32())
	}
	other2 := bytes.Clone(blk)
	other2[0] ^= 1
	good := func(seq uint64) *wire.Batch {
		return &wire.Batch{Seq: seq, Disk: "vda", Records: []wire.Record{{Index: 2, Flags: wire.FlagData, ID: h.ID(blk), Data: blk}}}
	}
	enc := func(b *wire.Batch) []byte {
		e, err := wire.EncodeBatch(nil, b)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	put := func(what string, body []byte, status int, code string) {
		t.Helper()
		expect(t, what, raw(t, u, "m", "POST", sp+"/batches", wire.ContentTypeBatch, body), status, code)
	}
	g := enc(good(0))
	before := srv.Stats().BytesReceived
	put("empty batch", nil, 400, api.CodeBadRequest)
	put("truncated batch", g[:len(g)-1], 400, api.CodeBadRequest)
	put("batch with trailing bytes", append(bytes.Clone(g), 1), 400, api.CodeBadRequest)
	wl := bytes.Clone(g)
	binary.BigEndian.PutUint32(wl[len(wl)-bs-4:], bs+1)
	put("wrong data length", wl, 400, api.CodeBadRequest)
	wrongID := good(0)
	wrongID.Records[0].ID = h.ID(other2)
	put("ID of other data", enc(wrongID), 400, api.CodeBadRequest)
	wrongKey := good(0)
	wrongKey.Records[0].ID = vault.NewBlockHasher([32]byte{1}).ID(blk)
	put("ID with another key", enc(wrongKey), 400, api.CodeBadRequest)
	short := good(0)
	short.Records[0].Data = blk[:100]
	short.Records[0].ID = h.ID(blk[:100])
	put("short block", enc(short), 400, api.CodeBadRequest)
	last := &wire.Batch{Seq: 0, Disk: "vda", Records: []wire.Record{{Index: 10, Flags: wire.FlagData, ID: h.ID(blk), Data: blk}}}
	put("full block where the disk's last block is short", enc(last), 400, api.CodeBadRequest)
	beyond := good(0)
	beyond.Records[0].Index = 11
	put("block beyond the disk", enc(beyond), 400, api.CodeBadRequest)
	nodisk := good(0)
	nodisk.Disk = "vdb"
	put("unknown disk", enc(nodisk), 400, api.CodeBadRequest)
	ref := &wire.Batch{Seq: 0, Disk: "vda", Records: []wire.Record{{Index: 1, Flags: wire.FlagRef, ID: h.ID(other2)}}}
	put("reference to a block nobody holds", enc(ref), 409, api.CodeConflict)
	put("batch far ahead", enc(good(1000)), 400, api.CodeBadRequest)
	tooBig := make([]byte, wire.MaxBatchBody+1)
	copy(tooBig, wire.TagBatch)
	put("batch too large", tooBig, 413, api.CodeTooLarge)
	expect(t, "commit with missing batches", raw(t, u, "m", "POST", sp+"/commit", "application/json", []byte(`{"batches":3}`)), 409, api.CodeConflict)
	expect(t, "commit malformed", raw(t, u, "m", "POST", sp+"/commit", "application/json", []byte(`{"batches":-1}`)), 400, api.CodeBadRequest)

	// Nothing of the rejected batches was stored.
	if n := len(segments(t, srv.o.CacheDir)); n != 0 || srv.Stats().CacheUsed != 0 || srv.Stats().BytesReceived != before {
		t.Fatalf("rejected batches left %d segments, stats %+v", n, srv.Stats())
	}
	v2 := openVault(t, vdir)
	if vaultHas(t, v2, h.ID(blk)) || vaultHas(t, v2, h.ID(other2)) {
		t.Fatal("a rejected block reached the vault")
	}

	// The session still works: the good batch, a repeat of it (stored
	// once), a reference to it, and a commit.
	expect(t, "good batch", raw(t, u, "m", "POST", sp+"/batches", wire.ContentTypeBatch, g), 200, "")
	rep := raw(t, u, "m", "POST", sp+"/batches", wire.ContentTypeBatch, g)
	if rep.status != 200 || !strings.Contains(string(rep.body), `"duplicate":true`) {
		t.Fatalf("repeated batch: %d %s", rep.status, rep.body)
	}
	put("blocks out of order across batches", enc(&wire.Batch{Seq: 1, Disk: "vda", Records: []wire.Record{{Index: 1, Flags: wire.FlagZero}}}), 400, api.CodeBadRequest)
	expect(t, "session failed by the disorder", raw(t, u, "m", "POST", sp+"/batches", wire.ContentTypeBatch, enc(&wire.Batch{Seq: 2, Disk: "vda", Records: []wire.Record{{Index: 5, Flags: wire.FlagZero}}})), 400, api.CodeBadRequest)
	expect(t, "commit of the failed session", raw(t, u, "m", "POST", sp+"/commit", "application/json", []byte(`{"batches":2}`)), 400, api.CodeBadRequest)
	if srv.Stats().Sessions != 0 {
		t.Fatal("failed session not removed")
	}
	if !vaultHas(t, openVault(t, vdir), h.ID(blk)) {
		t.Fatal("the acknowledged block of the failed session did not reach the vault")
	}

	return blk
}
