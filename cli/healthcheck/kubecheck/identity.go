package kubecheck

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/cli/install"
	"github.com/sluice-mesh/sluice/internal/pki"
)

const days = 24 * time.Hour

func identityCheckers(o Options) []healthcheck.Checker {
	ns := o.Namespace
	validity := fmt.Sprintf("valid for at least %d days", MinCertValidity/days)
	return []healthcheck.Checker{
		{
			ID:          CheckTrustAnchors,
			Description: "trust anchors are " + validity,
			Hint: fmt.Sprintf("every proxy trusts only these roots (configmap %s/%s, key %s): before one expires, "+
				"install a bundle of the old and a new root, and an issuer of the new one, with a values file that sets "+
				"identity.trustAnchorsPEM, identity.issuer.crtPEM and identity.issuer.keyPEM: `meshctl upgrade -f identity.yaml`",
				ns, install.TrustRootsConfigMap, install.TrustRootsKey),
			Requires: []healthcheck.CheckID{CheckNamespace},
			Check: func(ctx context.Context, s *healthcheck.State) error {
				cl := s.Cluster
				cm, err := cl.Client.CoreV1().ConfigMaps(cl.Namespace).Get(ctx, install.TrustRootsConfigMap, metav1.GetOptions{})
				if err != nil {
					return notFound(err, "configmap", cl.Namespace, install.TrustRootsConfigMap)
				}
				bundle := []byte(cm.Data[install.TrustRootsKey])
				anchors, err := pki.ParseCertificates(bundle)
				if err != nil {
					return fmt.Errorf("configmap %s/%s, key %s: %w", cl.Namespace, install.TrustRootsConfigMap, install.TrustRootsKey, err)
				}
				if err := checkAnchors(anchors, o.now()); err != nil {
					return err
				}
				s.TrustAnchorsPEM = bundle
				return nil
			},
			Detail: func(s *healthcheck.State) string {
				anchors, _ := pki.ParseCertificates(s.TrustAnchorsPEM)
				if len(anchors) == 1 {
					return "1 anchor, valid until " + date(anchors[0].NotAfter)
				}
				return fmt.Sprintf("%d anchors, the first valid until %s", len(anchors), date(firstExpiry(anchors)))
			},
		},
		{
			ID:          CheckIssuer,
			Description: "issuer certificate chains to the trust anchors",
			Hint: fmt.Sprintf("the identity service signs proxies' certificates with the issuer of secret %s/%s; it must "+
				"be a CA signed by a trust anchor, valid now, with its key: install a good one with a values file that sets "+
				"identity.issuer.crtPEM and identity.issuer.keyPEM: `meshctl upgrade -f issuer.yaml`", ns, install.IssuerSecret),
			Requires: []healthcheck.CheckID{CheckTrustAnchors},
			Check: func(ctx context.Context, s *healthcheck.State) error {
				_, err := loadIssuer(ctx, s, o.now())
				return err
			},
		},
		{
			Description: "issuer certificate is " + validity,
			Hint: "make a new issuer signed by the trust anchor and install it before this one expires, with a values " +
				"file that sets identity.issuer.crtPEM and identity.issuer.keyPEM: `meshctl upgrade -f issuer.yaml`; " +
				"proxies get certificates of the new issuer as they renew theirs",
			Warning:  true,
			Requires: []healthcheck.CheckID{CheckIssuer},
			Check: func(ctx context.Context, s *healthcheck.State) error {
				iss, err := loadIssuer(ctx, s, o.now())
				if err != nil {
					return err
				}
				return validFor(iss.Certificate(), "issuer certificate", o.now())
			},
		},
	}
}

// checkAnchors fails when an anchor is no CA, is not valid yet, has
// expired or expires within MinCertValidity.
func checkAnchors(anchors []*x509.Certificate, now time.Time) error {
	var errs []string
	for _, a := range anchors {
		if !a.IsCA {
			errs = append(errs, fmt.Sprintf("trust anchor %q is not a CA", a.Subject))
			continue
		}
		if err := validFor(a, "trust anchor", now); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// validFor fails when c is not valid at now or stops being valid within
// MinCertValidity, saying when.
func validFor(c *x509.Certificate, what string, now time.Time) error {
	switch left := c.NotAfter.Sub(now); {
	case now.Before(c.NotBefore):
		return fmt.Errorf("%s %q is not valid before %s", what, c.Subject, date(c.NotBefore))
	case left <= 0:
		return fmt.Errorf("%s %q expired on %s", what, c.Subject, date(c.NotAfter))
	case left < MinCertValidity:
		return fmt.Errorf("%s %q expires on %s, in %d days", what, c.Subject, date(c.NotAfter), int(left/days))
	}
	return nil
}

func firstExpiry(certs []*x509.Certificate) time.Time {
	var first time.Time
	for _, c := range certs {
		if first.IsZero() || c.NotAfter.Before(first) {
			first = c.NotAfter
		}
	}
	return first
}

// loadIssuer reads the issuer's secret and checks it against the trust
// anchors as the identity service does at start.
func loadIssuer(ctx context.Context, s *healthcheck.State, now time.Time) (*pki.Issuer, error) {
	cl := s.Cluster
	sec, err := cl.Client.CoreV1().Secrets(cl.Namespace).Get(ctx, install.IssuerSecret, metav1.GetOptions{})
	if err != nil {
		return nil, notFound(err, "secret", cl.Namespace, install.IssuerSecret)
	}
	iss, err := pki.LoadIssuer(sec.Data["tls.crt"], sec.Data["tls.key"], s.TrustAnchorsPEM, now)
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", cl.Namespace, install.IssuerSecret, err)
	}
	return iss, nil
}
