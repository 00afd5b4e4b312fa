package ingest

// The HTTP endpoint /ingest/v1/...: authorization, request bodies under
// the bandwidth limit, error answers, and one handler per request of the
// wire format (package wire).

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// httpError is an error with an HTTP status and API code.
type httpError struct {
	status int
	code   string
	msg    string
}

func (e *httpError) Error() string     { return e.msg }
func (e *httpError) HTTPStatus() int   { return e.status }
func (e *httpError) ErrorCode() string { return e.code }

func herr(status int, code, format string, args ...any) *httpError {
	return &httpError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

type statusError interface {
	HTTPStatus() int
	ErrorCode() string
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	if status == http.StatusServiceUnavailable && code == api.CodeBusy {
		w.Header().Set("Retry-After", strconv.Itoa(busyRetryAfter))
	}
	writeJSON(w, status, api.ErrorBody{Error: api.Error{Code: code, Message: msg}})
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var se statusError
	if errors.As(err, &se) {
		writeError(w, se.HTTPStatus(), se.ErrorCode(), err.Error())
		return
	}
	if errors.Is(err, context.Canceled) && s.ctx.Err() != nil {
		writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "the process server is shutting down; retry on another or later")
		return
	}
	s.log.Error("ingest request failed", "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, api.CodeInternal, err.Error())
}

type handler func(w http.ResponseWriter, r *http.Request, machine string) error

func (s *Server) wrap(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		machine, err := s.o.Authorize(r)
		if err != nil {
			var se statusError
			if errors.As(err, &se) {
				writeError(w, se.HTTPStatus(), se.ErrorCode(), err.Error())
			} else {
				writeError(w, http.StatusForbidden, api.CodeForbidden, err.Error())
			}
			return
		}
		if err := vault.ValidateName("machine", machine); err != nil {
			writeError(w, http.StatusForbidden, api.CodeForbidden, "the client certificate names no valid machine: "+err.Error())
			return
		}
		if err := h(w, r, machine); err != nil {
			s.fail(w, r, err)
		}
	}
}

// Handler serves /ingest/v1/...
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ingest/v1/info", s.wrap(s.handleInfo))
	mux.HandleFunc("POST /ingest/v1/sessions", s.wrap(s.handleOpen))
	mux.HandleFunc("POST /ingest/v1/sessions/{id}/have", s.wrap(s.handleHave))
	mux.HandleFunc("POST /ingest/v1/sessions/{id}/batches", s.wrap(s.handleBatch))
	mux.HandleFunc("POST /ingest/v1/sessions/{id}/commit", s.wrap(s.handleCommit))
	mux.HandleFunc("DELETE /ingest/v1/sessions/{id}", s.wrap(s.handleAbort))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no ingest endpoint %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (s *Server) info() wire.InfoResponse {
	k := s.v.BlockKey()
	return wire.InfoResponse{Name: s.o.Name, VaultID: s.v.Config().ID, BlockSize: s.v.Config().BlockSize, BlockKey: hex.EncodeToString(k[:])}
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request, _ string) error {
	writeJSON(w, http.StatusOK, s.info())
	return nil
}

// reqContext is the request's context, also cancelled when the server closes.
func (s *Server) reqContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(s.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// readBody reads a body of at most max bytes under the server's bandwidth
// limit (limit=true) into buf.
func (s *Server) readBody(ctx context.Context, r *http.Request, maxLen int, limit bool, buf []byte) ([]byte, error) {
	if r.ContentLength > int64(maxLen) {
		return buf, herr(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "body of %d bytes exceeds the limit of %d", r.ContentLength, maxLen)
	}
	var src io.Reader = r.Body
	if limit {
		src = wire.LimitReader(ctx, r.Body, s.limiter)
	}
	buf = buf[:0]
	if r.ContentLength > 0 && cap(buf) <= int(r.ContentLength) {
		buf = make([]byte, 0, r.ContentLength+1) // +1: room to see EOF
	}
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(max(cap(buf), 64<<10), maxLen+1-len(buf)))
		}
		n, err := src.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > maxLen {
			return buf, herr(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "body exceeds the limit of %d bytes", maxLen)
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return buf, ctx.Err()
			}
			return buf, herr(http.StatusBadRequest, api.CodeBadRequest, "read body: %v", err)
		}
	}
}

func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxOpenBody))
	if err := dec.Decode(v); err != nil {
		return herr(http.StatusBadRequest, api.CodeBadRequest, "malformed JSON body: %v", err)
	}
	if dec.More() {
		return herr(http.StatusBadRequest, api.CodeBadRequest, "malformed JSON body: data after the object")
	}
	return nil
}

// session looks up the session of a request for machine.
func (s *Server) session(r *http.Request, machine string) (*session, error) {
	id := r.PathValue("id")
	s.mu.Lock()
	ss, ok := s.sessions[id]
	lost, wasLost := s.lost[id]
	s.mu.Unlock()
	if !ok && wasLost && lost.machine == machine {
		return nil, s.lostAnswer(id, errors.New(lost.msg))
	}
	if !ok {
		return nil, herr(http.StatusNotFound, api.CodeNotFound, "no ingest session %q on process server %s (it restarted, or the session ended or expired): abort the cycle and start a new one", id, s.o.Name)
	}
	if ss.machine != machine {
		return nil, herr(http.StatusForbidden, api.CodeForbidden, "session %s belongs to machine %s, not %s", id, ss.machine, machine)
	}
	if err := ss.lostErr(); err != nil {
		return nil, err // nothing more is acknowledged under a lost lock
	}
	ss.touch()
	return ss, nil
}

func (s *Server) handleOpen(w http.ResponseWriter, r *http.Request, machine string) error {
	var req wire.SessionRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	ss, err := s.open(r.Context(), machine, req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.OpenResponse{Session: ss.id, Info: s.info()})
	return nil
}

func (s *Server) handleHave(w http.ResponseWriter, r *http.Request, machine string) error {
	ss, err := s.session(r, machine)
	if err != nil {
		return err
	}
	ctx, cancel := s.reqContext(r)
	defer cancel()
	body, err := s.readBody(ctx, r, wire.MaxHaveBody, false, nil)
	if err != nil {
		return err
	}
	ids, err := wire.DecodeHave(body)
	if err != nil {
		return herr(http.StatusBadRequest, api.CodeBadRequest, "%v", err)
	}
	have := make([]bool, len(ids))
	for i, id := range ids {
		have[i] = ss.has(id)
	}
	w.Header().Set("Content-Type", wire.ContentTypeHaveReply)
	_, _ = w.Write(wire.EncodeHaveReply(nil, have))
	return nil
}

func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request, machine string) error {
	ss, err := s.session(r, machine)
	if err != nil {
		return err
	}
	ctx, cancel := s.reqContext(r)
	defer cancel()
	select {
	case s.bodies <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.bodies }()
	bufp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bufp)
	body, err := s.readBody(ctx, r, wire.MaxBatchBody, true, *bufp)
	*bufp = body[:0]
	if err != nil {
		return err
	}
	b, err := wire.DecodeBatch(body)
	if err != nil {
		return herr(http.StatusBadRequest, api.CodeBadRequest, "%v", err)
	}
	resp, err := ss.put(ctx, b)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) handleCommit(w http.ResponseWriter, r *http.Request, machine string) error {
	id := r.PathValue("id")
	s.mu.Lock()
	d, done := s.done[id]
	s.mu.Unlock()
	if done && d.machine == machine {
		writeJSON(w, http.StatusOK, d.resp) // a retried commit
		return nil
	}
	ss, err := s.session(r, machine)
	if err != nil {
		return err
	}
	var req wire.CommitRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	resp, err := ss.commit(req.Batches)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) handleAbort(w http.ResponseWriter, r *http.Request, machine string) error {
	ss, err := s.session(r, machine)
	if he := (*httpError)(nil); errors.As(err, &he) && he.code == wire.CodeLockLost {
		w.WriteHeader(http.StatusNoContent) // over already: aborted for its lost lock
		return nil
	}
	if err != nil {
		return err
	}
	ss.abort(true)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
