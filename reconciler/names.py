"""The names every layer uses: the API groups and versions we read and write, and the marker on
what we write. It imports nothing, so the client layer and the caches can be loaded (and the
first request made) without the model's converters."""

NIMBUS_GROUP = "intent.security.nimbus.com"
NIMBUS_VERSION = "v1alpha1"
NIMBUS_API_VERSION = f"{NIMBUS_GROUP}/{NIMBUS_VERSION}"
KUBEARMOR_GROUP = "security.kubearmor.com"
KUBEARMOR_VERSION = "v1"
KUBEARMOR_API_VERSION = f"{KUBEARMOR_GROUP}/{KUBEARMOR_VERSION}"

MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "nimbus-kubearmor"
