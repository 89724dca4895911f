package identity

import (
	"context"
	"slices"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/sluice-mesh/sluice/controlplane/api/identity"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
)

var _ pb.IdentityServer = (*Service)(nil)

// tokenReviewTimeout bounds one TokenReview call.
const tokenReviewTimeout = 10 * time.Second

// refusal is a Certify failure: its gRPC status and its metric outcome.
type refusal struct {
	outcome string
	status  *status.Status
}

func refuse(outcome string, code codes.Code, format string, args ...any) *refusal {
	return &refusal{outcome: outcome, status: status.Newf(code, format, args...)}
}

// Certify implements sluice.identity.Identity/Certify: it checks the
// request's identity name, signing request and token, in that order, and
// signs a leaf certificate for the identity. Refusals carry the codes
// InvalidArgument (identity name or signing request), Unauthenticated
// (missing, invalid or expired token, or one without the audience
// meshmeta.IdentityAudience), PermissionDenied (a token of another service
// account) and Unavailable (the TokenReview failed, or the issuer expired),
// with a message that says what was wrong.
func (s *Service) Certify(ctx context.Context, req *pb.CertifyRequest) (*pb.CertifyResponse, error) {
	resp, r := s.certify(ctx, req)
	if r != nil {
		s.metrics.certify.WithLabelValues(r.outcome).Inc()
		s.log.Info("certify refused", "identity", req.GetIdentity(), "outcome", r.outcome,
			"code", r.status.Code().String(), "error", r.status.Message())
		return nil, r.status.Err()
	}
	s.metrics.certify.WithLabelValues(OutcomeOK).Inc()
	return resp, nil
}

func (s *Service) certify(ctx context.Context, req *pb.CertifyRequest) (*pb.CertifyResponse, *refusal) {
	id := req.GetIdentity()
	if id == "" {
		return nil, refuse(OutcomeInvalidIdentity, codes.InvalidArgument, "no identity in the request")
	}
	sa, ns, err := meshmeta.ParseIdentityName(id, s.cfg.TrustDomain)
	if err != nil {
		return nil, refuse(OutcomeInvalidIdentity, codes.InvalidArgument, "%v", err)
	}
	csr, err := pki.CheckCSR(req.GetCertificateSigningRequest(), id)
	if err != nil {
		return nil, refuse(OutcomeInvalidCSR, codes.InvalidArgument, "%v", err)
	}
	if r := s.reviewToken(ctx, req.GetToken(), id, sa, ns); r != nil {
		return nil, r
	}
	iss := s.currentIssuer()
	now := s.cfg.Now()
	if ic := iss.Certificate(); !now.Before(ic.NotAfter) {
		return nil, refuse(OutcomeIssuerExpired, codes.Unavailable, "the issuer %q expired at %s; it must be rotated",
			ic.Subject, ic.NotAfter.UTC().Format(time.RFC3339))
	}
	leaf, err := iss.Sign(csr.PublicKey, id, now.Add(-s.cfg.ClockSkew), now.Add(s.cfg.CertLifetime))
	if err != nil {
		return nil, refuse(OutcomeSignFailed, codes.Internal, "%v", err)
	}
	s.log.Info("certified", "identity", id, "serial", leaf.SerialNumber.Text(16),
		"valid_until", leaf.NotAfter.UTC().Format(time.RFC3339), "issuer_serial", iss.Certificate().SerialNumber.Text(16))
	return &pb.CertifyResponse{
		LeafCertificate:          leaf.Raw,
		IntermediateCertificates: iss.Chain(),
		ValidUntil:               timestamppb.New(leaf.NotAfter),
	}, nil
}

// reviewToken checks with a TokenReview that token is a valid token with
// the identity audience for service account ns/sa (of the identity id).
func (s *Service) reviewToken(ctx context.Context, token []byte, id, sa, ns string) *refusal {
	if len(token) == 0 {
		return refuse(OutcomeNoToken, codes.Unauthenticated, "no token in the request")
	}
	ctx, cancel := context.WithTimeout(ctx, tokenReviewTimeout)
	defer cancel()
	review, err := s.cfg.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: string(token), Audiences: []string{meshmeta.IdentityAudience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return refuse(OutcomeReviewFailed, codes.Unavailable, "review the token with the Kubernetes API: %v", err)
	}
	st := review.Status
	if !st.Authenticated {
		msg := "the token is not authenticated"
		if st.Error != "" {
			msg += ": " + st.Error
		}
		return refuse(OutcomeUnauthenticated, codes.Unauthenticated, "%s (a service-account token with the audience %s is needed)", msg, meshmeta.IdentityAudience)
	}
	if !slices.Contains(st.Audiences, meshmeta.IdentityAudience) {
		return refuse(OutcomeWrongAudience, codes.Unauthenticated, "the token is not for the audience %s (its audiences: %q)",
			meshmeta.IdentityAudience, st.Audiences)
	}
	tokNS, tokSA, ok := splitServiceAccount(st.User.Username)
	if !ok {
		return refuse(OutcomePermissionDenied, codes.PermissionDenied, "the token is for the user %q, not a service account", st.User.Username)
	}
	if tokNS != ns || tokSA != sa {
		return refuse(OutcomePermissionDenied, codes.PermissionDenied, "the token is for serviceaccount %s/%s, not %s (serviceaccount %s/%s)",
			tokNS, tokSA, id, ns, sa)
	}
	return nil
}

// splitServiceAccount splits "system:serviceaccount:<ns>:<sa>".
func splitServiceAccount(user string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(user, serviceAccountPrefix)
	if !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return "", "", false
	}
	return ns, sa, true
}
