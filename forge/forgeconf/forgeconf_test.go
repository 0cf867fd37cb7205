package forgeconf

import (
	"reflect"
	"strings"
	"testing"
)

// Settings (which the worker checks worker.toml against without linking
// this package) names every field of Entry, in order.
func TestSettingsNameEveryField(t *testing.T) {
	if got, want := tags(reflect.TypeFor[Entry]()), Settings; got != want {
		t.Errorf("Entry's settings are\n  %s\nSettings (forge/link.ForgeSettings) says\n  %s", got, want)
	}
}

func tags(t reflect.Type) string {
	var names []string
	for i := range t.NumField() {
		names = append(names, strings.Split(t.Field(i).Tag.Get("toml"), ",")[0])
	}
	return strings.Join(names, ", ")
}
