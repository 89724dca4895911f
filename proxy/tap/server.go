package tap

import (
	"google.golang.org/grpc/status"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
)

// Server implements the generated tap.TapServer over a Hub; register it
// with tap.RegisterTapServer(grpcServer, srv).
type Server struct {
	tappb.UnimplementedTapServer
	h *Hub
}

var _ tappb.TapServer = (*Server)(nil)

// NewServer returns a Server whose streams observe h's requests.
func NewServer(h *Hub) *Server { return &Server{h: h} }

// Observe streams the events of the requests that match req until the
// client cancels (Canceled) or, with a limit, until that many requests
// have been observed to their end (OK). An invalid match or max_rps gives
// InvalidArgument; MaxTaps open streams give ResourceExhausted.
func (s *Server) Observe(req *tappb.ObserveRequest, stream tappb.Tap_ObserveServer) error {
	t, err := s.h.open(req)
	if err != nil {
		return err
	}
	defer s.h.close(t)
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case ev := <-t.events:
			if err := stream.Send(ev); err != nil {
				return err
			}
		case <-t.done:
			// Every admitted request has queued its last event.
			for {
				select {
				case ev := <-t.events:
					if err := stream.Send(ev); err != nil {
						return err
					}
				default:
					return nil
				}
			}
		}
	}
}
