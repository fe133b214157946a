{{/*
A Deployment of a portal process that serves no port (worker, beat, collector). Call with a dict:
root, component, values (the component's values), replicas, command (a list), strategy,
automountToken, gracePeriod.
*/}}
{{- define "portal.backendDeployment" -}}
{{- $root := .root }}
{{- $component := dict "root" $root "component" .component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "portal.fullname" $root }}-{{ .component }}
  labels:
    {{- include "portal.componentLabels" $component | nindent 4 }}
spec:
  replicas: {{ .replicas }}
  revisionHistoryLimit: 3
  strategy:
    {{- toYaml .strategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "portal.componentSelector" $component | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "portal.componentLabels" $component | nindent 8 }}
      {{- with .values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "portal.serviceAccountName" $root }}
      automountServiceAccountToken: {{ .automountToken }}
      terminationGracePeriodSeconds: {{ .gracePeriod }}
      {{- with (include "portal.imagePullSecrets" $root) }}{{ . | nindent 6 }}{{ end }}
      securityContext:
        {{- include "portal.podSecurityContext" $root | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: {{ include "portal.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          env:
            {{- include "portal.env" $root | nindent 12 }}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          securityContext:
            {{- include "portal.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "portal.tmpMount" $root | nindent 12 }}
      volumes:
        {{- include "portal.tmpVolume" $root | nindent 8 }}
      {{- with .values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
