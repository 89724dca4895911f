package healthcheck

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Renderer writes results for people or programs. Observe is an Observer;
// Finish ends the output with the run's overall result.
type Renderer interface {
	Observe(Result)
	Finish(success bool) error
}

var (
	_ Renderer = (*TableRenderer)(nil)
	_ Renderer = (*JSONRenderer)(nil)
)

// The symbols of the table output, as linkerd check prints them.
const (
	symbolSuccess = "✔"
	symbolError   = "×"
	symbolWarning = "‼"
	symbolSkipped = "-"
)

// TableRenderer writes results as they arrive, as `linkerd check` does:
//
//	kernel
//	------
//	✔ kernel is 5.10 or newer (6.18.44)
//	× BPF filesystem is mounted
//	    /sys/fs/bpf is not mounted
//	    hint: mount it: mount -t bpf bpf /sys/fs/bpf
//
//	Status check results are ×
//
// Attempts that will be retried are not shown.
type TableRenderer struct {
	w        io.Writer
	category CategoryID
	started  bool
	err      error
}

// NewTableRenderer returns a renderer writing to w.
func NewTableRenderer(w io.Writer) *TableRenderer { return &TableRenderer{w: w} }

// Observe writes one result, preceded by its category's heading when the
// category changes.
func (t *TableRenderer) Observe(r Result) {
	if r.Retrying {
		return
	}
	var b strings.Builder
	if !t.started || r.Category != t.category {
		if t.started {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%s\n%s\n", r.Category, strings.Repeat("-", len([]rune(string(r.Category)))))
		t.started, t.category = true, r.Category
	}
	switch r.Outcome {
	case OutcomeSuccess:
		b.WriteString(symbolSuccess + " " + r.Description)
		if r.Detail != "" {
			b.WriteString(" (" + r.Detail + ")")
		}
		b.WriteString("\n")
	case OutcomeSkipped:
		b.WriteString(symbolSkipped + " " + r.Description + "\n")
		writeIndented(&b, errString(r.Err))
	default:
		sym := symbolError
		if r.Outcome == OutcomeWarning {
			sym = symbolWarning
		}
		b.WriteString(sym + " " + r.Description + "\n")
		writeIndented(&b, errString(r.Err))
		if r.Hint != "" {
			writeIndented(&b, "hint: "+r.Hint)
		}
	}
	t.write(b.String())
}

// Finish writes the closing "Status check results are ✔" (or ×) line and
// returns the first write error.
func (t *TableRenderer) Finish(success bool) error {
	sym := symbolSuccess
	if !success {
		sym = symbolError
	}
	if t.started {
		t.write("\n")
	}
	t.write("Status check results are " + sym + "\n")
	return t.err
}

func (t *TableRenderer) write(s string) {
	if t.err == nil {
		_, t.err = io.WriteString(t.w, s)
	}
}

// writeIndented writes s with every line indented by four spaces.
func writeIndented(b *strings.Builder, s string) {
	for line := range strings.SplitSeq(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + line + "\n")
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// JSONRenderer collects results and writes them as one JSON document when
// the run finishes, in the shape of `linkerd check -o json`:
//
//	{"success":false,"categories":[{"categoryName":"kernel","checks":[
//	  {"description":"...","hint":"...","error":"...","result":"error"}]}]}
//
// Hint and error are present only for checks that did not pass; a skipped
// check's error says why it was skipped.
type JSONRenderer struct {
	w   io.Writer
	out jsonOutput
}

type jsonOutput struct {
	Success    bool           `json:"success"`
	Categories []jsonCategory `json:"categories"`
}

type jsonCategory struct {
	Name   CategoryID  `json:"categoryName"`
	Checks []jsonCheck `json:"checks"`
}

type jsonCheck struct {
	Description string  `json:"description"`
	Detail      string  `json:"detail,omitempty"`
	Hint        string  `json:"hint,omitempty"`
	Error       string  `json:"error,omitempty"`
	Result      Outcome `json:"result"`
}

// NewJSONRenderer returns a renderer writing to w.
func NewJSONRenderer(w io.Writer) *JSONRenderer {
	return &JSONRenderer{w: w, out: jsonOutput{Categories: []jsonCategory{}}}
}

// Observe records one result.
func (j *JSONRenderer) Observe(r Result) {
	if r.Retrying {
		return
	}
	cats := j.out.Categories
	if len(cats) == 0 || cats[len(cats)-1].Name != r.Category {
		j.out.Categories = append(cats, jsonCategory{Name: r.Category, Checks: []jsonCheck{}})
	}
	c := jsonCheck{Description: r.Description, Detail: r.Detail, Result: r.Outcome}
	if r.Outcome != OutcomeSuccess {
		c.Error = errString(r.Err)
		if r.Outcome != OutcomeSkipped {
			c.Hint = r.Hint
		}
	}
	last := &j.out.Categories[len(j.out.Categories)-1]
	last.Checks = append(last.Checks, c)
}

// Finish writes the document.
func (j *JSONRenderer) Finish(success bool) error {
	j.out.Success = success
	enc := json.NewEncoder(j.w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // hints quote shell commands such as `a > b`
	if err := enc.Encode(j.out); err != nil {
		return fmt.Errorf("write check results: %w", err)
	}
	return nil
}
