package mail

import (
	"reflect"
	"strings"
	"testing"
)

// SettingNames (which the worker checks worker.toml against without
// linking this package) names every field of Settings, in order.
func TestSettingNamesNameEveryField(t *testing.T) {
	ty := reflect.TypeFor[Settings]()
	var names []string
	for i := range ty.NumField() {
		names = append(names, strings.Split(ty.Field(i).Tag.Get("toml"), ",")[0])
	}
	if got := strings.Join(names, ", "); got != SettingNames {
		t.Errorf("Settings' settings are\n  %s\nSettingNames (forge/link.MailSettings) says\n  %s", got, SettingNames)
	}
}
