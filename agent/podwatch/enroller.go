package podwatch

import (
	"context"
	"errors"
	"net/http"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/enroll"
)

// Enroller is the enrollment code the watcher drives. *api.Client (the
// admin API over its unix socket) implements it, and Local adapts the
// agent's in-process *enroll.Manager, the code behind that API; either way a
// request is validated and refused exactly as the admin API does.
type Enroller interface {
	Enroll(ctx context.Context, req api.EnrollRequest) (api.Enrollment, error)
	Unenroll(ctx context.Context, cookie uint64) error
	List(ctx context.Context) ([]api.Enrollment, error)
}

var _ Enroller = (*api.Client)(nil)

// LocalEnroller is the in-process form of Enroller, as served by the admin
// API (agent/server.Enroller); *enroll.Manager implements it.
type LocalEnroller interface {
	Enroll(ctx context.Context, req api.EnrollRequest) (api.Enrollment, error)
	Unenroll(ctx context.Context, cookie uint64) error
	List() []api.Enrollment
}

var _ LocalEnroller = (*enroll.Manager)(nil)

// Local returns an Enroller over the agent's own enrollment manager.
func Local(m LocalEnroller) Enroller { return local{m} }

type local struct{ m LocalEnroller }

func (l local) Enroll(ctx context.Context, req api.EnrollRequest) (api.Enrollment, error) {
	return l.m.Enroll(ctx, req)
}

func (l local) Unenroll(ctx context.Context, cookie uint64) error { return l.m.Unenroll(ctx, cookie) }

func (l local) List(context.Context) ([]api.Enrollment, error) { return l.m.List(), nil }

// isNotFound reports an unenroll of a cookie that is not enrolled, from the
// manager (enroll.ErrNotFound) or from the admin API (404).
func isNotFound(err error) bool {
	return errors.Is(err, enroll.ErrNotFound) || statusCode(err) == http.StatusNotFound
}

// isConflict reports an enrollment refused because the namespace or one of
// its addresses is enrolled already.
func isConflict(err error) bool {
	return errors.Is(err, enroll.ErrConflict) || statusCode(err) == http.StatusConflict
}

func statusCode(err error) int {
	var se *api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}
