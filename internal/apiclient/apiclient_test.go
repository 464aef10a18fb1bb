package apiclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestNewRefusesBadOptions(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Server: "ftp://example.org"}, "want http://HOST:PORT"},
		{Options{Server: "http://u:secret@127.0.0.1:1"}, "no credentials in the URL"},
		{Options{Server: "http://127.0.0.1:1/?token=x"}, "no query"},
		{Options{Server: "http://127.0.0.1:1", Token: "a b"}, "spaces or control characters"},
		{Options{Server: "http://127.0.0.1:1", Pin: strings.Repeat("a", 64)}, "needs an https server"},
		{Options{Server: "https://127.0.0.1:1", Pin: "abc"}, "64 hex digits"},
	} {
		_, err := New(c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v): %v, want %q", c.o, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("the error repeats the URL's password: %v", err)
		}
	}
}

func TestTokenInClear(t *testing.T) {
	for server, want := range map[string]bool{
		"http://127.0.0.1:8080": false, "http://localhost:8080": false, "http://[::1]:8080": false,
		"https://cp.example.org:8443": false, "http://cp.example.org:8080": true, "http://10.0.0.5:8080": true,
	} {
		c, err := New(Options{Server: server, Token: "t"})
		if err != nil {
			t.Fatal(err)
		}
		if c.TokenInClear() != want {
			t.Errorf("%s: TokenInClear = %v, want %v", server, !want, want)
		}
	}
}

// The token goes only in the Authorization header, and not after a
// redirect; a server's error text arrives without control characters.
func TestCallAndErrors(t *testing.T) {
	var elsewhere bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere = true }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			if r.Header.Get("Authorization") != "Bearer tok" || strings.Contains(r.URL.String(), "tok") {
				http.Error(w, "token not in the header", http.StatusBadRequest)
				return
			}
			w.Write([]byte(`{"n": 7}`))
		case "/move":
			http.Redirect(w, r, other.URL+"/steal", http.StatusFound)
		case "/fail":
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"error": "host h1 is connected\u001b[2J\nforged line"}`))
		}
	}))
	defer srv.Close()
	c, err := New(Options{Server: srv.URL, Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ N int }
	if _, err := c.Call(context.Background(), "GET", "/ok", nil, nil, &v); err != nil || v.N != 7 {
		t.Fatalf("Call: %v, %+v", err, v)
	}
	if _, err := c.Call(context.Background(), "GET", "/move", nil, nil, &v); err == nil || elsewhere {
		t.Errorf("a redirect was followed (elsewhere: %v): %v", elsewhere, err)
	}
	_, err = c.Call(context.Background(), "POST", "/fail", nil, map[string]int{"x": 1}, &v)
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || strings.ContainsAny(ae.Msg, "\x1b\n") ||
		!strings.HasPrefix(ae.Msg, "host h1 is connected") {
		t.Errorf("error answer: %#v", err)
	}
	srv.Close()
	if _, err := c.Call(context.Background(), "GET", "/ok", nil, nil, &v); !errors.Is(err, ErrUnreachable) {
		t.Errorf("closed server: %v, want ErrUnreachable", err)
	}
}
