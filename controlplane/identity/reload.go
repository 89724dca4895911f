package identity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/sluice-mesh/sluice/internal/pki"
)

// errFilesChanging says the files changed while they were read.
var errFilesChanging = errors.New("the issuer files changed while being read")

// issuerFiles are the contents of the issuer's and the anchors' files.
type issuerFiles struct {
	cert, key, anchors []byte
}

func (f issuerFiles) equal(g issuerFiles) bool {
	return bytes.Equal(f.cert, g.cert) && bytes.Equal(f.key, g.key) && bytes.Equal(f.anchors, g.anchors)
}

// digest identifies the contents of the three files together.
func (f issuerFiles) digest() [32]byte {
	h := sha256.New()
	for _, b := range [][]byte{f.cert, f.key, f.anchors} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// readFiles reads the three files. Paths are opened anew each time, so a
// Secret volume's ..data symlink swap is followed.
func (s *Service) readFiles() (issuerFiles, error) {
	var f issuerFiles
	for _, r := range []struct {
		dst  *[]byte
		name string
		what string
	}{
		{&f.cert, s.cfg.IssuerCertFile, "issuer certificate"},
		{&f.key, s.cfg.IssuerKeyFile, "issuer key"},
		{&f.anchors, s.cfg.TrustAnchorsFile, "trust anchors"},
	} {
		b, err := os.ReadFile(r.name)
		if err != nil {
			return issuerFiles{}, fmt.Errorf("read the %s: %w", r.what, err)
		}
		*r.dst = b
	}
	return f, nil
}

// readStable reads the files twice and fails with errFilesChanging unless
// both reads agree, so that a certificate and a key caught halfway through
// an update are not taken for a mismatched pair.
func (s *Service) readStable() (issuerFiles, error) {
	first, err := s.readFiles()
	if err != nil {
		return issuerFiles{}, err
	}
	second, err := s.readFiles()
	if err != nil {
		return issuerFiles{}, err
	}
	if !first.equal(second) {
		return issuerFiles{}, errFilesChanging
	}
	return second, nil
}

// Reload reads the issuer and trust anchor files once. When their contents
// differ from those of the issuer in use and hold a valid issuer, the
// service signs with it from then on and Reload returns true. When they
// cannot be read or hold no valid issuer, the issuer in use is kept and
// Reload returns why (logging it once per content, and trying the same
// content again at the next call: a not yet valid issuer becomes valid).
// Unchanged files return false and nil. Run calls Reload every ReloadInterval; tests may call it
// directly.
func (s *Service) Reload() (bool, error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	files, err := s.readStable()
	if errors.Is(err, errFilesChanging) {
		s.log.Debug("issuer files are changing; reading them again at the next poll")
		return false, err
	}
	if err != nil {
		if err.Error() != s.readErr {
			s.readErr = err.Error()
			s.metrics.reloads.WithLabelValues("error").Inc()
			s.log.Warn("cannot read the issuer files; keeping the issuer in use", "error", err.Error())
		}
		return false, err
	}
	s.readErr = ""
	d := files.digest()
	if d == s.loaded {
		return false, nil
	}
	iss, err := pki.LoadIssuer(files.cert, files.key, files.anchors, s.cfg.Now())
	if err != nil {
		err = fmt.Errorf("new issuer from %s rejected: %w", s.cfg.IssuerCertFile, err)
		if d == s.rejected {
			// Logged and counted when first seen; tried again at each
			// poll, since time alone can make it valid.
			return false, err
		}
		s.rejected = d
		s.metrics.reloads.WithLabelValues("rejected").Inc()
		old := s.Issuer()
		s.log.Error("new issuer rejected; keeping the issuer in use", "error", err.Error(),
			"in_use", old.Subject.String(), "in_use_serial", old.SerialNumber.Text(16))
		return false, err
	}
	s.issuer.Store(iss)
	s.loaded = d
	s.rejected = [32]byte{}
	s.metrics.reloads.WithLabelValues("ok").Inc()
	s.logIssuer("issuer rotated", iss)
	return true, nil
}

// Run polls the files every ReloadInterval until ctx ends, taking up a
// new valid issuer as Reload does. It returns nil when ctx ends.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.ReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.Reload()
		}
	}
}
