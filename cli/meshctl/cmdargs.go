package meshctl

import (
	"fmt"
	"slices"
	"strings"
)

// Output formats beyond check's table and json.
const (
	outputWide = "wide"
	outputText = "text"
)

// checkOutput refuses an --output that is not one of formats.
func checkOutput(output string, formats ...string) error {
	if slices.Contains(formats, output) {
		return nil
	}
	quoted := make([]string, len(formats))
	for i, f := range formats {
		quoted[i] = fmt.Sprintf("%q", f)
	}
	last := len(quoted) - 1
	return fmt.Errorf("invalid --output %q: use %s or %s", output, strings.Join(quoted[:last], ", "), quoted[last])
}

// splitTypeName reads the arguments TYPE [NAME], which may also be given
// as one TYPE/NAME as kubectl takes them. name is "" when there is none.
func splitTypeName(args []string) (typ, name string, err error) {
	typ, name, slash := strings.Cut(args[0], "/")
	switch {
	case len(args) > 1 && slash:
		return "", "", fmt.Errorf("invalid arguments %q: give TYPE/NAME or TYPE NAME, not both", strings.Join(args, " "))
	case len(args) > 1:
		name = args[1]
	case slash && (name == "" || strings.Contains(name, "/")):
		return "", "", fmt.Errorf("invalid argument %q: give TYPE/NAME, such as deploy/web", args[0])
	}
	return typ, name, nil
}
