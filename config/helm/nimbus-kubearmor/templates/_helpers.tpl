{{/* The release's name, unless it already says nimbus-kubearmor; at most 63 characters. */}}
{{- define "nimbus-kubearmor.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nimbus-kubearmor.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nimbus-kubearmor.labels" -}}
{{ include "nimbus-kubearmor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: nimbus-kubearmor
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "nimbus-kubearmor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "nimbus-kubearmor.fullname" . -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Exactly what the reconciler does (config/rbac/role.yaml; a test keeps them equal). */}}
{{- define "nimbus-kubearmor.rules" -}}
# Reads every NimbusPolicy (list + watch into its cache; get when its status write
# met another adapter's, to retry on what that one wrote).
- apiGroups: [intent.security.nimbus.com]
  resources: [nimbuspolicies]
  verbs: [get, list, watch]
# Writes its part of a NimbusPolicy's status (JSON patch on /status).
- apiGroups: [intent.security.nimbus.com]
  resources: [nimbuspolicies/status]
  verbs: [patch]
# Sets blockOwnerDeletion on the policies it owns (needed where the
# OwnerReferencesPermissionEnforcement admission plugin is on).
- apiGroups: [intent.security.nimbus.com]
  resources: [nimbuspolicies/finalizers]
  verbs: [update]
# Watches every KubeArmorPolicy (list + watch into its cache); creates, repairs and deletes
# the ones it owns.
- apiGroups: [security.kubearmor.com]
  resources: [kubearmorpolicies]
  verbs: [list, watch, create, patch, delete]
# Reports bad input as Events on the NimbusPolicy, reading first which it already posted (a
# list in the NimbusPolicy's namespace, selected by its uid).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- end -}}

{{- define "nimbus-kubearmor.subject" -}}
- kind: ServiceAccount
  name: {{ include "nimbus-kubearmor.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}

{{/* The metrics port's name: what it speaks. */}}
{{- define "nimbus-kubearmor.metricsPortName" -}}
{{- if .Values.metricsSecure }}https-metrics{{ else }}http-metrics{{ end -}}
{{- end -}}

{{/* Where a metrics certificate Secret is mounted (kubebuilder's path). */}}
{{- define "nimbus-kubearmor.metricsCertPath" -}}
/tmp/k8s-metrics-server/metrics-certs
{{- end -}}
