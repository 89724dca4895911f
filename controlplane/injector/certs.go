package injector

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// CertReloader serves the certificate and key in two PEM files and loads
// them again when either file changes (a Secret volume's update replaces
// them), checking at each TLS handshake. A pair that does not load keeps
// the previous certificate in service and is logged; the files are read
// again at the next handshake.
type CertReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu        sync.Mutex
	cert      *tls.Certificate
	certStat  os.FileInfo
	keyStat   os.FileInfo
	lastError string
}

// NewCertReloader loads certFile and keyFile; they must form a valid pair.
// log may be nil.
func NewCertReloader(certFile, keyFile string, log *slog.Logger) (*CertReloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &CertReloader{certFile: certFile, keyFile: keyFile, log: log.With("component", "injector-tls")}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

// load reads the pair; the caller holds r.mu or owns r.
func (r *CertReloader) load() error {
	cs, err := os.Stat(r.certFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate: %w", err)
	}
	ks, err := os.Stat(r.keyFile)
	if err != nil {
		return fmt.Errorf("load TLS key: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate %s and key %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.certStat, r.keyStat = &cert, cs, ks
	return nil
}

// changed reports whether a file differs from what was loaded.
func changed(path string, old os.FileInfo) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false // keep serving what we have; load reports it
	}
	return !os.SameFile(st, old) || !st.ModTime().Equal(old.ModTime()) || st.Size() != old.Size()
}

// GetCertificate is tls.Config.GetCertificate.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if changed(r.certFile, r.certStat) || changed(r.keyFile, r.keyStat) {
		if err := r.load(); err != nil {
			if msg := err.Error(); msg != r.lastError {
				r.log.Error("keeping the previous certificate", "error", msg)
				r.lastError = msg
			}
		} else {
			r.lastError = ""
			r.log.Info("reloaded TLS certificate", "cert", r.certFile, "not_after", r.cert.Leaf.NotAfter.Format(time.RFC3339))
		}
	}
	return r.cert, nil
}

// TLSConfig returns a server configuration that serves r's certificate,
// TLS 1.2 at least.
func (r *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
}
