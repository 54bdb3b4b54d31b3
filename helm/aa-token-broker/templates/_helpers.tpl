{{/* Names, labels and the sidecar's named templates. */}}

{{- define "aa-token-broker.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aa-token-broker.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aa-token-broker.labels" -}}
app.kubernetes.io/name: {{ include "aa-token-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "aa-token-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aa-token-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aa-token-broker.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The Secret holding the entity secret. */}}
{{- define "aa-token-broker.secretName" -}}
{{- if .Values.secret.existingSecret -}}
{{- .Values.secret.existingSecret -}}
{{- else if .Values.secret.create -}}
{{- include "aa-token-broker.fullname" . -}}
{{- else -}}
{{- fail "set secret.existingSecret (preferred) or secret.create with secret.value" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the sidecar runs as a native sidecar (Kubernetes >= 1.29, or forced). */}}
{{- define "aa-token-broker.native" -}}
{{- if eq .Values.sidecar.mode "native" -}}
true
{{- else if eq .Values.sidecar.mode "regular" -}}
false
{{- else if semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}

{{/*
The sidecar container. Include it with "aa-token-broker.initContainers" and
"aa-token-broker.containers" rather than directly, so the right form is chosen.
*/}}
{{- define "aa-token-broker.sidecar" -}}
- name: aa-token-broker
  image: {{ include "aa-token-broker.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if eq (include "aa-token-broker.native" .) "true" }}
  restartPolicy: Always
  {{- end }}
  args: ["serve"]
  env:
    - name: AA_BROKER_ENTITY_ID
      value: {{ required "entityId is required" .Values.entityId | quote }}
    {{- if .Values.iam.url }}
    - name: AA_BROKER_IAM_URL
      value: {{ .Values.iam.url | quote }}
    {{- else }}
    - name: AA_BROKER_ENVIRONMENT
      value: {{ .Values.iam.environment | quote }}
    {{- end }}
    - name: AA_BROKER_SECRET_FILE
      value: /var/run/secrets/aa-token-broker/{{ .Values.secret.key }}
    - name: AA_BROKER_LISTEN
      value: "127.0.0.1:{{ .Values.sidecar.port }}"
    {{- if .Values.sidecar.adminPort }}
    - name: AA_BROKER_ADMIN_LISTEN
      value: "0.0.0.0:{{ .Values.sidecar.adminPort }}"
    {{- end }}
    - name: AA_BROKER_LOG_FORMAT
      value: {{ .Values.sidecar.logFormat | quote }}
    - name: AA_BROKER_LOG
      value: {{ .Values.sidecar.logLevel | quote }}
    {{- with .Values.sidecar.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if .Values.sidecar.adminPort }}
  ports:
    - name: metrics
      containerPort: {{ .Values.sidecar.adminPort }}
      protocol: TCP
  {{- end }}
  {{- if eq (include "aa-token-broker.native" .) "true" }}
  startupProbe:
    exec:
      command: ["aa-token-broker", "healthcheck"]
    periodSeconds: 1
    failureThreshold: 120
  {{- else }}
  lifecycle:
    postStart:
      exec:
        command: ["aa-token-broker", "healthcheck", "--wait", "{{ .Values.sidecar.holdApplicationSeconds }}"]
  {{- end }}
  livenessProbe:
    exec:
      command: ["aa-token-broker", "healthcheck", "--live"]
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    exec:
      command: ["aa-token-broker", "healthcheck"]
    periodSeconds: 5
    failureThreshold: 2
  resources:
    {{- toYaml .Values.sidecar.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.sidecar.securityContext | nindent 4 }}
  volumeMounts:
    - name: aa-token-broker-secret
      mountPath: /var/run/secrets/aa-token-broker
      readOnly: true
{{- end -}}

{{/* The sidecar when it is native; nothing otherwise. For a pod spec's initContainers. */}}
{{- define "aa-token-broker.initContainers" -}}
{{- if eq (include "aa-token-broker.native" .) "true" -}}
{{ include "aa-token-broker.sidecar" . }}
{{- end -}}
{{- end -}}

{{/* The sidecar when it is a regular container; nothing otherwise. List it FIRST in containers. */}}
{{- define "aa-token-broker.containers" -}}
{{- if ne (include "aa-token-broker.native" .) "true" -}}
{{ include "aa-token-broker.sidecar" . }}
{{- end -}}
{{- end -}}

{{/* The volume holding the entity secret, mounted whole (not subPath) so rotation reaches running pods. */}}
{{- define "aa-token-broker.volumes" -}}
- name: aa-token-broker-secret
  secret:
    secretName: {{ include "aa-token-broker.secretName" . }}
    # Only the sidecar mounts this volume; world-readable inside it so any runAsUser can read it.
    defaultMode: 0444
    items:
      - key: {{ .Values.secret.key }}
        path: {{ .Values.secret.key }}
{{- end -}}
