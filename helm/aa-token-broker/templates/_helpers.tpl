{{/*
Names, labels, and the named templates that put the sidecar into a pod.

The pod templates ("aa-token-broker.initContainers", ".containers", ".volumes", ".env", ".initEnv",
".podSecurityContext", ".podLabels") take one explicit context, so that a parent chart can call them:

  (dict "root" $ "values" .Values.tokenBroker)

"root" is the caller's root context: only its .Release and .Capabilities are read. "values" are this
chart's values as the parent holds them (Helm merges the chart's defaults in). They never read the
caller's own .Values (its image, its sidecar, ...), and never its .Chart, which is the parent's.
This chart's own templates call them with (dict "root" $ "values" .Values).
*/}}

{{- define "aa-token-broker.name" -}}
aa-token-broker
{{- end -}}

{{/* The release's name for this chart's objects; the same from the chart and from a parent chart. */}}
{{- define "aa-token-broker.fullname" -}}
{{- if contains "aa-token-broker" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-aa-token-broker" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
The rotation CronJob's schedule: rotation.schedule when set; otherwise derived from the release, so that
releases do not all rotate at one fixed minute: a hash (adler32) of "NAMESPACE/FULLNAME" picks the minute
and the hour. A primary runs once a day at that time. A standby runs four times a day, half an hour past
the primary's minute, so that it converges on a reset made elsewhere within six hours — well inside the
half of a 24-hour token's life that a sidecar still holds after such a reset.
*/}}
{{- define "aa-token-broker.rotationSchedule" -}}
{{- if .Values.rotation.schedule -}}
{{- .Values.rotation.schedule -}}
{{- else -}}
{{- $hash := printf "%s/%s" .Release.Namespace (include "aa-token-broker.fullname" .) | adler32sum | atoi -}}
{{- $minute := mod $hash 60 -}}
{{- $hour := mod (div $hash 60) 24 -}}
{{- if .Values.rotation.standby -}}
{{- $h := mod $hour 6 -}}
{{- printf "%d %d,%d,%d,%d * * *" (mod (add $minute 30) 60) $h (add $h 6) (add $h 12) (add $h 18) -}}
{{- else -}}
{{- printf "%d %d * * *" $minute $hour -}}
{{- end -}}
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

{{/* (dict "root" $ "values" ...) The sidecar image. The tag is a value (not .Chart.AppVersion, which is
the parent's chart when a parent calls this). */}}
{{- define "aa-token-broker.image" -}}
{{ .values.image.repository }}:{{ required "image.tag is required" .values.image.tag }}
{{- end -}}

{{/* (dict "root" $ "values" ...) The Secret holding the (one) entity secret. */}}
{{- define "aa-token-broker.secretName" -}}
{{- if .values.secret.existingSecret -}}
{{- .values.secret.existingSecret -}}
{{- else if .values.secret.create -}}
{{- include "aa-token-broker.fullname" .root -}}
{{- else -}}
{{- fail "set secret.existingSecret (preferred) or secret.create with secret.value" -}}
{{- end -}}
{{- end -}}

{{/* (dict "root" $ "values" ...) The ConfigMap holding the broker's TOML file (several entities). */}}
{{- define "aa-token-broker.configName" -}}
{{- printf "%s-config" (include "aa-token-broker.fullname" .root) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* (dict "root" $ "values" ...) "true" when the sidecar runs as a native sidecar (Kubernetes >= 1.29,
or forced). Under `helm template` without --kube-version, Helm reports its built-in default version,
which is newer than 1.29: auto then renders the native form. */}}
{{- define "aa-token-broker.native" -}}
{{- if eq .values.sidecar.mode "native" -}}
true
{{- else if eq .values.sidecar.mode "regular" -}}
false
{{- else if semverCompare ">=1.29-0" .root.Capabilities.KubeVersion.Version -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}

{{/* (dict "root" $ "values" ...) The Secret holding the FI key-encryption key; empty when FI is off. */}}
{{- define "aa-token-broker.kekSecretName" -}}
{{- $kek := (.values.fi | default dict).kekSecret | default dict -}}
{{- if and (or $kek.existingSecret $kek.create) .values.entities -}}
{{- fail "fi.kekSecret serves one entity; with entities, set fi_kek_file per entity in the broker's TOML file" -}}
{{- else if $kek.existingSecret -}}
{{- $kek.existingSecret -}}
{{- else if $kek.create -}}
{{- printf "%s-fi-kek" (include "aa-token-broker.fullname" .root) -}}
{{- end -}}
{{- end -}}

{{/* (dict "root" $ "values" ...) Which entity, which IAM, which secret: the variables the sidecar and the
`helm test` pod share. */}}
{{- define "aa-token-broker.brokerEnv" -}}
{{- if .values.entities }}
- name: AA_BROKER_CONFIG
  value: /etc/aa-token-broker/config.toml
{{- else }}
- name: AA_BROKER_ENTITY_ID
  value: {{ required "entityId (or entities) is required" .values.entityId | quote }}
- name: AA_BROKER_SECRET_FILE
  value: /var/run/secrets/aa-token-broker/{{ .values.secret.key }}
{{- end }}
{{- if .values.iam.url }}
- name: AA_BROKER_IAM_URL
  value: {{ .values.iam.url | quote }}
{{- else }}
- name: AA_BROKER_ENVIRONMENT
  value: {{ .values.iam.environment | quote }}
{{- end }}
{{- end -}}

{{/* (dict "root" $ "values" ...) Where the secrets (and, with several entities, the TOML file) are
mounted: whole directories, read-only, never subPath (the kubelet never updates a subPath mount). */}}
{{- define "aa-token-broker.volumeMounts" -}}
{{- if .values.entities }}
- name: aa-token-broker-config
  mountPath: /etc/aa-token-broker
  readOnly: true
{{- range $index, $entity := .values.entities }}
- name: aa-token-broker-secret-{{ $index }}
  mountPath: /var/run/secrets/aa-token-broker-{{ $index }}
  readOnly: true
{{- end }}
{{- else }}
- name: aa-token-broker-secret
  mountPath: /var/run/secrets/aa-token-broker
  readOnly: true
{{- end }}
{{- end -}}

{{/* (dict "root" $ "values" ...) A probe: httpGet on the admin port when it is on, else the binary's own
healthcheck (the image has no shell or curl). Takes "live" (bool) too. */}}
{{- define "aa-token-broker.probe" -}}
{{- if .values.sidecar.adminPort }}
httpGet:
  path: {{ if .live }}/healthz{{ else }}/readyz{{ end }}
  port: broker-metrics
{{- else }}
exec:
  command: ["aa-token-broker", "healthcheck"{{ if .live }}, "--live"{{ end }}]
{{- end }}
{{- end -}}

{{/*
(dict "root" $ "values" ...) The sidecar container. Include it with "aa-token-broker.initContainers" and
"aa-token-broker.containers" rather than directly, so the right form is chosen.
*/}}
{{- define "aa-token-broker.sidecar" -}}
{{- $native := eq (include "aa-token-broker.native" .) "true" -}}
{{- $probe := dict "root" .root "values" .values "live" false -}}
{{- $live := dict "root" .root "values" .values "live" true -}}
- name: aa-token-broker
  image: {{ include "aa-token-broker.image" . }}
  imagePullPolicy: {{ .values.image.pullPolicy }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  args: ["serve"]
  env:
    {{- include "aa-token-broker.brokerEnv" . | nindent 4 }}
    - name: AA_BROKER_LISTEN
      value: "127.0.0.1:{{ .values.sidecar.port }}"
    {{- if .values.sidecar.adminPort }}
    - name: AA_BROKER_ADMIN_LISTEN
      value: "0.0.0.0:{{ .values.sidecar.adminPort }}"
    {{- end }}
    - name: AA_BROKER_LOG_FORMAT
      value: {{ .values.sidecar.logFormat | quote }}
    - name: AA_BROKER_LOG
      value: {{ .values.sidecar.logLevel | quote }}
    {{- if include "aa-token-broker.kekSecretName" . }}
    - name: AA_BROKER_FI_KEK_FILE
      value: /var/run/secrets/aa-token-broker-fi/{{ .values.fi.kekSecret.key }}
    {{- end }}
    {{- with .values.sidecar.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if .values.sidecar.adminPort }}
  ports:
    - name: broker-metrics
      containerPort: {{ .values.sidecar.adminPort }}
      protocol: TCP
  {{- end }}
  {{- if .values.sidecar.await }}
  {{- if $native }}
  # The kubelet starts the next containers once this passes: when a token exists.
  startupProbe:
    {{- include "aa-token-broker.probe" $probe | nindent 4 }}
    periodSeconds: 1
    failureThreshold: 120
  {{- else }}
  # The kubelet starts the next container when this hook returns: when a token exists, or after the hold.
  lifecycle:
    postStart:
      exec:
        command: ["aa-token-broker", "healthcheck", "--wait", "{{ .values.sidecar.holdApplicationSeconds }}"]
  {{- end }}
  {{- end }}
  livenessProbe:
    {{- include "aa-token-broker.probe" $live | nindent 4 }}
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    {{- include "aa-token-broker.probe" $probe | nindent 4 }}
    periodSeconds: 5
    failureThreshold: 2
  resources:
    {{- toYaml .values.sidecar.resources | nindent 4 }}
  securityContext:
    {{- toYaml .values.sidecar.securityContext | nindent 4 }}
  volumeMounts:
    {{- include "aa-token-broker.volumeMounts" . | nindent 4 }}
    {{- if include "aa-token-broker.kekSecretName" . }}
    # The FI key-encryption key: in this container only, never in the application's.
    - name: aa-token-broker-fi-kek
      mountPath: /var/run/secrets/aa-token-broker-fi
      readOnly: true
    {{- end }}
{{- end -}}

{{/* (dict "root" $ "values" ...) The sidecar when it is native; nothing otherwise. FIRST in initContainers. */}}
{{- define "aa-token-broker.initContainers" -}}
{{- if eq (include "aa-token-broker.native" .) "true" -}}
{{ include "aa-token-broker.sidecar" . }}
{{- end -}}
{{- end -}}

{{/* (dict "root" $ "values" ...) The sidecar when it is a regular container; nothing otherwise. FIRST in containers. */}}
{{- define "aa-token-broker.containers" -}}
{{- if ne (include "aa-token-broker.native" .) "true" -}}
{{ include "aa-token-broker.sidecar" . }}
{{- end -}}
{{- end -}}

{{/* (dict "root" $ "values" ...) The variable that tells an application container where the broker is. */}}
{{- define "aa-token-broker.env" -}}
- name: AA_TOKEN_BROKER_URL
  value: "http://127.0.0.1:{{ .values.sidecar.port }}"
{{- end -}}

{{/* (dict "root" $ "values" ...) The variable for the application's INIT containers: the same as
"aa-token-broker.env" with a native sidecar, which starts before them; nothing with a regular one, which
starts after them (the URL would lead nowhere). */}}
{{- define "aa-token-broker.initEnv" -}}
{{- if eq (include "aa-token-broker.native" .) "true" -}}
{{ include "aa-token-broker.env" . }}
{{- end -}}
{{- end -}}

{{/* (dict "root" $ "values" ...) What the POD's securityContext needs for the sidecar to read its secret:
an fsGroup (the Secret's files are 0440 and belong to that group), the sidecar's runAsGroup. Nothing when
runAsGroup is null (OpenShift's restricted-v2 assigns an fsGroup itself). A pod that already sets an
fsGroup of its own can keep it instead: the broker reads through any. */}}
{{- define "aa-token-broker.podSecurityContext" -}}
{{- with .values.sidecar.securityContext.runAsGroup -}}
fsGroup: {{ . }}
{{- end -}}
{{- end -}}

{{/* (dict "root" $ "values" ...) The pod label the PodMonitor selects (`inject` sets it too). */}}
{{- define "aa-token-broker.podLabels" -}}
aa-token-broker/sidecar: "true"
{{- end -}}

{{/* (dict "root" $ "values" ...) The volumes: the entity secret(s), each mounted whole so rotation
reaches running pods, and with several entities the ConfigMap holding the TOML file. */}}
{{- define "aa-token-broker.volumes" -}}
{{- if .values.entities }}
- name: aa-token-broker-config
  configMap:
    name: {{ include "aa-token-broker.configName" . }}
{{- range $index, $entity := .values.entities }}
- name: aa-token-broker-secret-{{ $index }}
  secret:
    secretName: {{ $entity.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $entity.key | default "secret" }}
        path: {{ $entity.key | default "secret" }}
{{- end }}
{{- else }}
- name: aa-token-broker-secret
  secret:
    secretName: {{ include "aa-token-broker.secretName" . }}
    # Only the sidecar mounts this volume. Its files are root's, readable by the pod's fsGroup
    # ("aa-token-broker.podSecurityContext"), which the broker has as a supplementary group: no other
    # user reads them, and the broker does not warn about the mode.
    defaultMode: 0440
    items:
      - key: {{ .values.secret.key }}
        path: {{ .values.secret.key }}
{{- end }}
{{- with include "aa-token-broker.kekSecretName" . }}
- name: aa-token-broker-fi-kek
  secret:
    secretName: {{ . }}
    # Mounted by the sidecar alone (its own securityContext), whole, so a rotated KEK reaches running pods.
    defaultMode: 0444
    items:
      - key: {{ $.values.fi.kekSecret.key }}
        path: {{ $.values.fi.kekSecret.key }}
{{- end }}
{{- end -}}
