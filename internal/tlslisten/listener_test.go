package tlslisten

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

type fixture struct {
	l    *Listener
	url  string
	ca   *pki.CA
	addr string
}

// serve runs an HTTPS server ("ok" to every request) behind a Listener.
func serve(t *testing.T, lim Limits) *fixture {
	t.Helper()
	ca, err := pki.CreateCA("", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer("lifeboat-server", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(inner, pki.ServerTLS(cert, ca.Pool(), false), lim.WithDefaults(APIDefaults), slog.New(slog.DiscardHandler))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	lim.WithDefaults(APIDefaults).Apply(srv)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return &fixture{l: l, url: "https://" + inner.Addr().String(), ca: ca, addr: inner.Addr().String()}
}

// get makes one request on a new connection within 5 s.
func (f *fixture) get() error {
	tr := &http.Transport{TLSClientConfig: pki.ClientTLS(nil, f.ca.Pool()), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(f.url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && string(b) != "ok" {
		err = errors.New("answer " + string(b))
	}
	return err
}

// idle opens n TCP connections from the loopback address from that send
// nothing.
func idle(t *testing.T, to, from string, n int) []net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	var cs []net.Conn
	for range n {
		c, err := d.Dial("tcp", to)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	t.Cleanup(func() {
		for _, c := range cs {
			c.Close()
		}
	})
	return cs
}

// closedByServer counts the connections the server closed within d.
func closedByServer(cs []net.Conn, d time.Duration) int {
	n := 0
	deadline := time.Now().Add(d)
	for _, c := range cs {
		c.SetReadDeadline(deadline)
		if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, errTimeout(err)) {
			n++
		}
	}
	return n
}

func errTimeout(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return nil
}

func TestServesThroughTheListener(t *testing.T) {
	f := serve(t, Limits{})
	for range 3 {
		if err := f.get(); err != nil {
			t.Fatal(err)
		}
	}
	if s := f.l.Stats(); s.Accepted != 3 {
		t.Fatalf("stats %+v", s)
	}
}

// Connections beyond the per-address cap on handshakes are closed at once;
// another address is served meanwhile.
func TestHandshakesPerAddress(t *testing.T) {
	f := serve(t, Limits{MaxHandshakesPerAddr: 4})
	cs := idle(t, f.addr, "127.0.0.2", 20)
	if n := closedByServer(cs[4:], 2*time.Second); n != 16 {
		t.Fatalf("%d of the 16 connections beyond the cap were closed", n)
	}
	if n := closedByServer(cs[:4], 200*time.Millisecond); n != 0 {
		t.Fatalf("%d connections within the cap were closed before their handshake timeout", n)
	}
	if err := f.get(); err != nil {
		t.Fatalf("a client from another address was not served: %v", err)
	}
	if s := f.l.Stats(); s.PerAddr != 16 || s.Handshaking != 4 {
		t.Fatalf("stats %+v", s)
	}
}

// A connection that does not finish its handshake in time is closed.
func TestHandshakeTimeout(t *testing.T) {
	f := serve(t, Limits{HandshakeTimeout: api.Duration(300 * time.Millisecond)})
	cs := idle(t, f.addr, "127.0.0.1", 2)
	start := time.Now()
	if n := closedByServer(cs, 3*time.Second); n != 2 {
		t.Fatalf("%d of 2 idle connections closed", n)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
		t.Fatalf("closed after %s, want about 300ms", d)
	}
	waitStats(t, f.l, func(s Stats) bool { return s.Open == 0 && s.Failed == 2 })
}

func waitStats(t *testing.T, l *Listener, ok func(Stats) bool) {
	t.Helper()
	for range 100 {
		if ok(l.Stats()) {
			return
		}
		time.Sleep(20 * time.Millisecond) // poll pause, at most 100 times
	}
	t.Fatalf("stats %+v", l.Stats())
}

// At the connection cap, a new connection takes the place of the oldest
// one still in its handshake, whatever its address.
func TestCapMakesRoomFromHandshakes(t *testing.T) {
	f := serve(t, Limits{MaxConns: 16, MaxHandshakesPerAddr: 4})
	var cs []net.Conn
	for i := 2; i < 6; i++ {
		cs = append(cs, idle(t, f.addr, "127.0.0."+string(rune('0'+i)), 4)...)
	}
	waitStats(t, f.l, func(s Stats) bool { return s.Open == 16 && s.Handshaking == 16 })
	for range 3 {
		// Each keeps its connection: each needs a place of its own.
		c, err := tls.Dial("tcp", f.addr, pki.ClientTLS(nil, f.ca.Pool()))
		if err != nil {
			t.Fatalf("no room made at the cap: %v", err)
		}
		defer c.Close()
	}
	if n := closedByServer(cs[:3], 2*time.Second); n != 3 {
		t.Fatalf("%d of the 3 oldest handshakes were closed", n)
	}
	if s := f.l.Stats(); s.Evicted != 3 || s.Open > 16 {
		t.Fatalf("stats %+v", s)
	}
}

// When every connection at the cap is serving, new ones wait in the
// kernel's queue until one closes.
func TestCapWaitsForServingConnections(t *testing.T) {
	f := serve(t, Limits{MaxConns: 16})
	var held []*tls.Conn
	for range 16 {
		c, err := tls.Dial("tcp", f.addr, pki.ClientTLS(nil, f.ca.Pool()))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	waitStats(t, f.l, func(s Stats) bool { return s.Open == 16 && s.Handshaking == 0 })
	done := make(chan error, 1)
	go func() { done <- f.get() }()
	select {
	case err := <-done:
		t.Fatalf("served beyond the cap: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	held[0].Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestFitToFileLimit(t *testing.T) {
	api, ing := APIDefaults, IngestDefaults
	if note := FitToFileLimit(65536, &api, &ing); note != "" || api.MaxConns != 4096 || ing.MaxConns != 2048 {
		t.Fatalf("65536: %q %d %d", note, api.MaxConns, ing.MaxConns)
	}
	note := FitToFileLimit(1024, &api, &ing)
	if api.MaxConns != 512 || ing.MaxConns != 256 || !strings.Contains(note, "1024") {
		t.Fatalf("1024: %q %d %d", note, api.MaxConns, ing.MaxConns)
	}
	if api.MaxConns+ing.MaxConns+int(Reserve(1024)) > 1024 {
		t.Fatal("caps exceed the limit")
	}
	small := APIDefaults
	FitToFileLimit(100, &small)
	if small.MaxConns != minConns || small.MaxHandshakesPerAddr != minConns {
		t.Fatalf("100: %+v", small)
	}
	if FileLimit(); true {
		if n, err := FileLimit(); err != nil || n == 0 {
			t.Fatalf("FileLimit %d %v", n, err)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := APIDefaults.Validate("api_limits"); err != nil {
		t.Fatal(err)
	}
	if err := IngestDefaults.Validate("ingest_limits"); err != nil {
		t.Fatal(err)
	}
	bad := APIDefaults
	bad.ReadTimeout = api.Duration(30 * time.Second)
	if err := bad.Validate("api_limits"); err == nil || !strings.Contains(err.Error(), "api_limits.read_timeout") {
		t.Fatalf("got %v", err)
	}
	bad = APIDefaults
	bad.MaxHandshakesPerAddr = bad.MaxConns + 1
	if err := bad.Validate("api_limits"); err == nil {
		t.Fatal("accepted more handshakes per address than connections")
	}
}
