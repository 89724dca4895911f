// Package keypair serves a TLS certificate and its key from PEM files and
// reloads them when they change, as a mounted Secret does when it is
// updated: a TLS server built with GetCertificate picks up a renewed
// certificate at its next handshake, without a restart.
package keypair

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Reloader holds the certificate of a pair of files. It is safe for
// concurrent use.
type Reloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu        sync.Mutex
	cert      *tls.Certificate
	certStamp stamp
	keyStamp  stamp
	failed    [2]stamp // the stamps of the pair that last failed to load, so it is logged once
}

// stamp tells whether a file changed: its modification time and size.
type stamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) (stamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}, err
	}
	return stamp{mod: fi.ModTime(), size: fi.Size()}, nil
}

// Load reads the PEM certificate (chain) in certFile and its key in
// keyFile. log (nil: discard) hears of reloads and of changed files that
// do not load; the last good pair is then kept.
func Load(certFile, keyFile string, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, log: log.With("component", "keypair")}
	cs, ks, cert, err := r.read()
	if err != nil {
		return nil, err
	}
	r.cert, r.certStamp, r.keyStamp = cert, cs, ks
	return r, nil
}

func (r *Reloader) read() (cs, ks stamp, cert *tls.Certificate, err error) {
	if cs, err = stampOf(r.certFile); err != nil {
		return cs, ks, nil, fmt.Errorf("read certificate: %w", err)
	}
	if ks, err = stampOf(r.keyFile); err != nil {
		return cs, ks, nil, fmt.Errorf("read key: %w", err)
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return cs, ks, nil, fmt.Errorf("load key pair %s, %s: %w", r.certFile, r.keyFile, err)
	}
	return cs, ks, &c, nil
}

// Certificate returns the current certificate, first reloading the files
// when their modification time or size changed. When the changed files do
// not load (a half-written update), it keeps returning the last good
// certificate.
func (r *Reloader) Certificate() *tls.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	cs, errC := stampOf(r.certFile)
	ks, errK := stampOf(r.keyFile)
	if errC != nil || errK != nil || (cs == r.certStamp && ks == r.keyStamp) {
		return r.cert
	}
	cs, ks, cert, err := r.read()
	if err != nil {
		if bad := [2]stamp{cs, ks}; bad != r.failed {
			r.failed = bad
			r.log.Warn("certificate files changed but do not load; keeping the previous certificate", "error", err.Error())
		}
		return r.cert
	}
	r.cert, r.certStamp, r.keyStamp, r.failed = cert, cs, ks, [2]stamp{}
	r.log.Info("reloaded certificate", "cert", r.certFile)
	return r.cert
}

// GetCertificate is Certificate as a tls.Config.GetCertificate.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.Certificate(), nil
}
