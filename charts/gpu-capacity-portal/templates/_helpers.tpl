{{/* Names: DNS labels are at most 63 characters. */}}
{{- define "portal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects are shared by every namespace: the namespace keeps two releases apart. */}}
{{- define "portal.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "portal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portal.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "portal.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of one component; call with (dict "root" $ "component" "web"). */}}
{{- define "portal.componentLabels" -}}
{{ include "portal.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "portal.componentSelector" -}}
{{ include "portal.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "portal.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
PORTAL_ALLOWED_HOSTS: the configured and Ingress hosts, the web Service's cluster names (in-cluster
clients), and the pod's IP (the kubelet's probes and Prometheus address the pod by it).
*/}}
{{- define "portal.allowedHosts" -}}
{{- $svc := include "portal.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $hosts := concat .Values.config.allowedHosts .Values.ingress.hosts (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns)) }}
{{- /* $(POD_IP) is expanded by the kubelet from the variable defined before it. */ -}}
{{- append (uniq $hosts) "$(POD_IP)" | join "," }}
{{- end }}

{{- define "portal.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name }}
      key: {{ .ref.key }}
{{- end }}

{{/*
The environment every portal container gets: exactly what portal.settings.production requires,
secrets by reference only. Inline rather than in a ConfigMap, because the migration hook runs
before any of the chart's own objects exist.
*/}}
{{- define "portal.env" -}}
- name: DJANGO_SETTINGS_MODULE
  value: portal.settings.production
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: PORTAL_ALLOWED_HOSTS
  value: {{ include "portal.allowedHosts" . | quote }}
{{- with .Values.config.csrfTrustedOrigins }}
- name: PORTAL_CSRF_TRUSTED_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
- name: PORTAL_SSL_REDIRECT
  value: {{ .Values.config.sslRedirect | quote }}
- name: PORTAL_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
{{ include "portal.secretEnv" (dict "env" "PORTAL_SECRET_KEY" "ref" .Values.secrets.secretKey) }}
{{ include "portal.secretEnv" (dict "env" "DATABASE_URL" "ref" .Values.secrets.databaseUrl) }}
{{ include "portal.secretEnv" (dict "env" "CELERY_BROKER_URL" "ref" .Values.secrets.brokerUrl) }}
{{ include "portal.secretEnv" (dict "env" "PORTAL_CREDENTIALS_KEYS" "ref" .Values.secrets.credentialsKeys) }}
{{ include "portal.secretEnv" (dict "env" "PORTAL_METRICS_TOKEN" "ref" .Values.secrets.metricsToken) }}
{{- with .Values.oidc }}
{{- if .enabled }}
- name: PORTAL_OIDC_ENABLED
  value: "true"
{{ include "portal.secretEnv" (dict "env" "PORTAL_OIDC_CLIENT_ID" "ref" (dict "name" .client.name "key" .client.idKey)) }}
{{ include "portal.secretEnv" (dict "env" "PORTAL_OIDC_CLIENT_SECRET" "ref" (dict "name" .client.name "key" .client.secretKey)) }}
- name: PORTAL_OIDC_AUTHORIZATION_ENDPOINT
  value: {{ .authorizationEndpoint | quote }}
- name: PORTAL_OIDC_TOKEN_ENDPOINT
  value: {{ .tokenEndpoint | quote }}
- name: PORTAL_OIDC_USER_ENDPOINT
  value: {{ .userEndpoint | quote }}
{{- with .jwksEndpoint }}
- name: PORTAL_OIDC_JWKS_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: PORTAL_OIDC_SIGN_ALGO
  value: {{ .signAlgo | quote }}
- name: PORTAL_OIDC_SCOPES
  value: {{ .scopes | quote }}
- name: PORTAL_OIDC_CREATE_USER
  value: {{ .createUser | quote }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.config.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Pod Security `restricted`: non-root, the runtime's seccomp profile. */}}
{{- define "portal.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Repeated per container so that a container added later cannot miss it. */}}
{{- define "portal.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "portal.tmpVolume" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "portal.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "portal.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Values the schema cannot relate to each other: fail at template time with a sentence. */}}
{{- define "portal.validate" -}}
{{- $web := .Values.web }}
{{- if $web.autoscaling.enabled }}
{{- if gt (int $web.autoscaling.minReplicas) (int $web.autoscaling.maxReplicas) }}
{{- fail (printf "web.autoscaling.minReplicas (%v) must not exceed web.autoscaling.maxReplicas (%v)" $web.autoscaling.minReplicas $web.autoscaling.maxReplicas) }}
{{- end }}
{{- end }}
{{- $pdb := $web.podDisruptionBudget }}
{{- if $pdb.enabled }}
{{- $least := ternary $web.autoscaling.minReplicas $web.replicas $web.autoscaling.enabled }}
{{- if and (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "string" $pdb.minAvailable)) }}
{{- if ge (int $pdb.minAvailable) (int $least) }}
{{- fail (printf "web.podDisruptionBudget.minAvailable (%v) must be below the web replica count (%v), or no node could ever be drained" $pdb.minAvailable $least) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
