package tap

import (
	"encoding/json"
	"errors"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Outcomes of a tap request, the label of tap_requests_total.
const (
	outcomeOK              = "ok"
	outcomeBadRequest      = "bad_request"
	outcomeUnauthenticated = "unauthenticated"
	outcomeForbidden       = "forbidden"
	outcomeNotFound        = "not_found"
	outcomeNoPods          = "no_meshed_pods"
	outcomeUnavailable     = "unavailable"
	outcomeError           = "error"
)

// outcomes lists them, to initialize the counter's series.
var outcomes = [...]string{outcomeOK, outcomeBadRequest, outcomeUnauthenticated, outcomeForbidden, outcomeNotFound, outcomeNoPods, outcomeUnavailable, outcomeError}

// apiError is a failed request, answered with a Kubernetes Status.
type apiError struct {
	code    int
	reason  metav1.StatusReason
	outcome string
	msg     string
	details *metav1.StatusDetails
}

func (e *apiError) Error() string { return e.msg }

func badRequest(msg string) *apiError {
	return &apiError{code: http.StatusBadRequest, reason: metav1.StatusReasonBadRequest, outcome: outcomeBadRequest, msg: msg}
}

func unauthorized(msg string) *apiError {
	return &apiError{code: http.StatusUnauthorized, reason: metav1.StatusReasonUnauthorized, outcome: outcomeUnauthenticated, msg: msg}
}

func notFound(msg string) *apiError {
	return &apiError{code: http.StatusNotFound, reason: metav1.StatusReasonNotFound, outcome: outcomeNotFound, msg: msg}
}

func internalError(msg string) *apiError {
	return &apiError{code: http.StatusInternalServerError, reason: metav1.StatusReasonInternalError, outcome: outcomeError, msg: msg}
}

// fromAPIError turns an error of the Kubernetes API into an apiError that
// keeps its code and reason (a missing deployment stays a 404), with
// prefix before its message.
func fromAPIError(prefix string, err error) *apiError {
	var se apierrors.APIStatus
	if errors.As(err, &se) {
		st := se.Status()
		e := &apiError{code: int(st.Code), reason: st.Reason, msg: prefix + st.Message, details: st.Details, outcome: outcomeError}
		switch st.Code {
		case http.StatusNotFound:
			e.outcome = outcomeNotFound
		case 0:
			e.code = http.StatusInternalServerError
		}
		return e
	}
	return internalError(prefix + err.Error())
}

// writeStatus answers with e as a Kubernetes Status in JSON.
func writeStatus(w http.ResponseWriter, e *apiError) {
	st := metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
		Message:  e.msg,
		Reason:   e.reason,
		Details:  e.details,
		Code:     int32(e.code),
	}
	b, _ := json.Marshal(&st)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.code)
	w.Write(append(b, '\n'))
}
