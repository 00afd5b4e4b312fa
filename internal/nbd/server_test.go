package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// memExport serves a byte slice; zero runs of 64 KiB blocks are holes.
type memExport struct {
	data      []byte
	bad       int64 // a read touching this offset fails (-1: none)
	reads     atomic.Int64
	readBytes atomic.Int64
	failed    atomic.Int64
}

func (m *memExport) Size() int64 { return int64(len(m.data)) }

func (m *memExport) ReadAt(_ context.Context, p []byte, off int64) error {
	m.reads.Add(1)
	m.readBytes.Add(int64(len(p)))
	if m.bad >= off && m.bad < off+int64(len(p)) {
		m.failed.Add(1)
		return errors.New("block damaged (test)")
	}
	copy(p, m.data[off:])
	return nil
}

func (m *memExport) Extents(_ context.Context, off, length int64) ([]Extent, error) {
	const bs = 64 << 10
	var out []Extent
	for pos := off; pos < off+length; {
		b := pos / bs
		end := min((b+1)*bs, m.Size(), off+length)
		var f uint32
		if isZero(m.data[b*bs : min((b+1)*bs, m.Size())]) {
			f = FlagHole | FlagZero
		}
		out = appendExtent(out, Extent{Offset: pos, Length: end - pos, Flags: f})
		pos = end
	}
	return out, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// sparseImage makes size bytes where a third of the 64 KiB blocks hold data.
func sparseImage(size int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, size)
	for off := 0; off < size; off += 64 << 10 {
		if r.IntN(3) == 0 {
			end := min(off+64<<10, size)
			for i := off; i < end; i++ {
				b[i] = byte(r.Uint32())
			}
		}
	}
	return b
}

type testServer struct {
	sock string
	addr string
	exp  *memExport
	srv  *Server
}

func startServer(t *testing.T, exp *memExport, tlsConf *tls.Config) *testServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ts := &testServer{sock: filepath.Join(dir, "nbd.sock"), exp: exp}
	ts.srv = NewServer(ServerOptions{
		Lookup: func(name string) (Export, bool) { return exp, name == "disk" },
		Names:  func() []string { return []string{"disk"} },
		TLS:    tlsConf,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	t.Cleanup(func() { cancel(); <-done; <-done })
	ul, err := net.Listen("unix", ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = tl.Addr().String()
	go func() { ts.srv.Serve(ctx, ul); done <- struct{}{} }()
	go func() { ts.srv.Serve(ctx, tl); done <- struct{}{} }()
	return ts
}

// TestServerWithOwnClient: reads at random offsets and block status match
// the data; reads over holes read only the data from the export; writes are refused; an unknown export is an option error; a
// failed read is EIO and the connection stays usable.
func TestServerWithOwnClient(t *testing.T) {
	exp := &memExport{data: sparseImage(5<<20+4096, 1), bad: -1}
	ts := startServer(t, exp, nil)
	ctx := ctxT(t)
	c, err := Dial(ctx, "unix", ts.sock, Options{Export: "disk", MetaContexts: []string{metaAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != exp.Size() || !c.ReadOnly() {
		t.Fatalf("size %d read-only %v", c.Size(), c.ReadOnly())
	}
	r := rand.New(rand.NewPCG(2, 2))
	for range 200 {
		off := r.Int64N(exp.Size())
		n := 1 + r.Int64N(min(exp.Size()-off, 1<<20))
		got := make([]byte, n)
		if err := c.ReadAt(ctx, got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, exp.data[off:off+n]) {
			t.Fatalf("read %d+%d differs", off, n)
		}
	}
	// Reads over holes are answered with hole chunks: the export reads
	// only the data.
	exp.readBytes.Store(0)
	data := int64(0)
	for off := int64(0); off < exp.Size(); off += 64 << 10 {
		if b := exp.data[off:min(off+64<<10, exp.Size())]; !isZero(b) {
			data += int64(len(b))
		}
	}
	for off := int64(0); off < exp.Size(); off += 1 << 20 {
		got := make([]byte, min(1<<20, exp.Size()-off))
		if err := c.ReadAt(ctx, got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, exp.data[off:off+int64(len(got))]) {
			t.Fatalf("read %d+%d differs", off, len(got))
		}
	}
	if got := exp.readBytes.Load(); got != data {
		t.Errorf("a read of the whole export read %d bytes of it, want its %d bytes of data", got, data)
	}
	ext, err := c.BlockStatus(ctx, 0, exp.Size(), metaAllocation)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := exp.Extents(ctx, 0, exp.Size())
	var wantMerged []Extent
	for _, e := range want {
		wantMerged = appendExtent(wantMerged, e)
	}
	if len(ext) == 0 || ext[0] != wantMerged[0] {
		t.Fatalf("block status %v, want %v", ext[:min(3, len(ext))], wantMerged[:min(3, len(wantMerged))])
	}
	if err := c.WriteAt(ctx, make([]byte, 512), 0); err == nil {
		t.Fatal("a write to the read-only export succeeded")
	}
	// A damaged data block (a hole is answered without reading).
	exp.bad = 3 << 20
	for isZero(exp.data[exp.bad : exp.bad+64<<10]) {
		exp.bad += 64 << 10
	}
	if err := c.ReadAt(ctx, make([]byte, 4096), exp.bad); !errors.Is(err, syscall.EIO) {
		t.Fatalf("damaged read: %v, want EIO", err)
	}
	exp.bad = -1
	if err := c.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatalf("the connection broke after an EIO: %v", err)
	}
	if _, err := Dial(ctx, "unix", ts.sock, Options{Export: "nope"}); err == nil || !strings.Contains(err.Error(), "unknown export") {
		t.Fatalf("unknown export: %v", err)
	}
}

// TestServerWithQEMU: QEMU's own tools read the export as a disk:
// qemu-img compare against the image, qemu-io pattern reads, nbdinfo's
// allocation map, and the same over TLS with client certificates from
// our CA (qemu-img's tls-creds-x509).
func TestServerWithQEMU(t *testing.T) {
	needQEMUIO(t)
	exp := &memExport{data: sparseImage(8<<20, 3), bad: -1}
	copy(exp.data[1<<20:], bytes.Repeat([]byte{0xa5}, 64<<10))
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(raw, exp.data, 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, exp, nil)
	uri := "nbd+unix:///disk?socket=" + ts.sock
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", raw, uri)
	out := string(run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0xa5 1M 64k", uri))
	if !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("qemu-io: %s", out)
	}
	if _, err := exec.LookPath("nbdinfo"); err == nil {
		m := string(run(t, "nbdinfo", "--map", uri))
		if !strings.Contains(m, "hole,zero") || !strings.Contains(m, "data") {
			t.Fatalf("nbdinfo --map shows no holes or no data:\n%s", m)
		}
	}
	conv := filepath.Join(dir, "copy.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, conv)
	if got, _ := os.ReadFile(conv); !bytes.Equal(got, exp.data) {
		t.Fatal("qemu-img convert of the export differs from the image")
	}

	// TLS with client certificates.
	creds, serverTLS := tlsFixture(t, dir)
	tts := startServer(t, exp, serverTLS)
	obj := "tls-creds-x509,id=tls0,endpoint=client,dir=" + creds
	img := `json:{"driver":"raw","file":{"driver":"nbd","server":{"type":"inet","host":"127.0.0.1","port":"` + strings.Split(tts.addr, ":")[1] + `"},"export":"disk","tls-creds":"tls0","tls-hostname":"localhost"}}`
	run(t, "qemu-img", "compare", "--object", obj, "-f", "raw", "-F", "raw", raw, img)
	// Without TLS the server refuses.
	if out, err := exec.Command("qemu-img", "info", "nbd://"+tts.addr+"/disk").CombinedOutput(); err == nil {
		t.Fatalf("plain client accepted by a TLS server: %s", out)
	}
}

// tlsFixture writes a CA, a client certificate and key for QEMU's
// tls-creds-x509 into a directory and returns it with the server's TLS
// configuration (client certificates required).
func tlsFixture(t *testing.T, dir string) (string, *tls.Config) {
	t.Helper()
	now := time.Now()
	ca, err := pki.CreateCA("nbd test", now)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer("localhost", []string{"localhost", "127.0.0.1"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("qemu")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, _, err := ca.SignCSR(csrPEM, "agent", "qemu", nil, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "creds")
	os.Mkdir(creds, 0o700)
	for name, b := range map[string][]byte{"ca-cert.pem": ca.CertPEM(), "client-cert.pem": certPEM, "client-key.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(creds, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert())
	return creds, &tls.Config{Certificates: []tls.Certificate{srv}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
}

// TestServerHostileClient: garbage, oversized options, writes larger
// than any request, and requests outside the export end the connection
// or get an error; the server goes on serving others.
func TestServerHostileClient(t *testing.T) {
	exp := &memExport{data: make([]byte, 1<<20), bad: -1}
	ts := startServer(t, exp, nil)
	send := func(b []byte) {
		t.Helper()
		c, err := net.Dial("unix", ts.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		greeting := make([]byte, 18)
		if _, err := c.Read(greeting); err != nil {
			t.Fatal(err)
		}
		c.Write(b)
		buf := make([]byte, 4096)
		answered := false
		for {
			n, err := c.Read(buf)
			answered = answered || n > 0
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() && !answered {
					t.Fatalf("the server neither answered nor hung up on %x", b[:min(len(b), 32)])
				}
				return
			}
		}
	}
	opt := func(o, n uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes)
		b = binary.BigEndian.AppendUint64(b, magicOpt)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, n)
		return append(b, data...)
	}
	send([]byte("GET / HTTP/1.1\r\n\r\n"))
	send(opt(optGo, 1<<30, nil))
	send(opt(optGo, 3, []byte{0, 0, 0}))
	send(opt(optSetMetaContext, 8, []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}))
	send(opt(optExportName, 4, []byte("nope")))
	c, err := Dial(ctxT(t), "unix", ts.sock, Options{Export: "disk"})
	if err != nil {
		t.Fatalf("the server stopped serving after hostile clients: %v", err)
	}
	c.Close()
}

// FuzzServerNegotiate feeds arbitrary client bytes to a server
// connection: it must answer or hang up, never panic or hang.
func FuzzServerNegotiate(f *testing.F) {
	hello := binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes)
	goOpt := binary.BigEndian.AppendUint64(hello, magicOpt)
	goOpt = binary.BigEndian.AppendUint32(goOpt, optGo)
	goOpt = binary.BigEndian.AppendUint32(goOpt, 10)
	goOpt = append(goOpt, 0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 0)
	read := binary.BigEndian.AppendUint32(nil, magicRequest)
	read = append(read, 0, 0, 0, cmdRead)
	read = binary.BigEndian.AppendUint64(read, 7)
	read = binary.BigEndian.AppendUint64(read, 100)
	read = binary.BigEndian.AppendUint32(read, 512)
	f.Add(hello)
	f.Add(goOpt)
	f.Add(append(bytes.Clone(goOpt), read...))
	exp := &memExport{data: make([]byte, 1<<16), bad: -1}
	srv := NewServer(ServerOptions{Lookup: func(name string) (Export, bool) { return exp, name == "disk" }, HandshakeTimeout: time.Second})
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() {
			srv.ServeConn(context.Background(), a)
			close(done)
		}()
		go func() {
			b.Write(in)
			b.Close()
		}()
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := b.Read(buf); err != nil {
					return
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the server hung on %x", in)
		}
	})
}

// FuzzDecodeRequest: any 28 bytes decode or fail cleanly, and a decoded
// request's range check never overflows.
func FuzzDecodeRequest(f *testing.F) {
	f.Add(make([]byte, requestLen))
	f.Fuzz(func(t *testing.T, h []byte) {
		r, err := decodeRequest(h)
		if err != nil {
			return
		}
		if errno, _ := r.check(1 << 20); errno == 0 && (r.length == 0 || r.off+uint64(r.length) > 1<<20) {
			t.Fatalf("request %+v accepted for a 1 MiB export", r)
		}
	})
}
