{{/*
Named templates. The public ones (documented in README.md) take the chart's context: `$` inside
this chart, `.Subcharts.<name or alias>` in a parent chart that depends on this one, so that they
see this chart's values, name and release exactly as its own templates do.

  readiness-gate-sidecar.container           the sidecar as a `containers` list item
  readiness-gate-sidecar.nativeSidecar       the sidecar as an `initContainers` list item
                                             (restartPolicy: Always; Kubernetes >= 1.29)
  readiness-gate-sidecar.readinessGates      the Pod's `readinessGates` list items
  readiness-gate-sidecar.serviceAccountName  the ServiceAccount the Pod must run as
*/}}

{{- define "readiness-gate-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "readiness-gate-sidecar.fullname" -}}
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

{{- define "readiness-gate-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "readiness-gate-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "readiness-gate-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "readiness-gate-sidecar.labels" -}}
helm.sh/chart: {{ include "readiness-gate-sidecar.chart" . }}
{{ include "readiness-gate-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* A cluster-scoped name that is unique per release and namespace. */}}
{{- define "readiness-gate-sidecar.clusterName" -}}
{{- printf "%s.%s" (include "readiness-gate-sidecar.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "." }}
{{- end }}

{{/*
The ServiceAccount: serviceAccount.name, else readiness-gate-sidecar-<release>. The default follows
the naming convention of the cluster-wide policy in examples/rbac/validating-admission-policy.yaml
(readiness-gate-sidecar or readiness-gate-sidecar-*), so that policy covers this agent too when an
administrator installed it and admissionPolicy.enabled is false.
*/}}
{{- define "readiness-gate-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- else if not .Values.serviceAccount.create }}
{{- fail "serviceAccount.name is required when serviceAccount.create is false" }}
{{- else if or (eq .Release.Name "readiness-gate-sidecar") (hasPrefix "readiness-gate-sidecar-" .Release.Name) }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "readiness-gate-sidecar-%s" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Whether the ServiceAccount name follows the convention the example policy matches. */}}
{{- define "readiness-gate-sidecar.followsPolicyConvention" -}}
{{- $name := include "readiness-gate-sidecar.serviceAccountName" . }}
{{- if or (eq $name "readiness-gate-sidecar") (regexMatch "^readiness-gate-sidecar-[^:]+$" $name) }}true{{ end }}
{{- end }}

{{- define "readiness-gate-sidecar.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The condition types the agent writes, space-separated and sorted: gate.conditionType and every
check's own gate; none in the probe-only mode (gate.write false).
*/}}
{{- define "readiness-gate-sidecar.conditionTypes" -}}
{{- if .Values.gate.write }}
{{- $gates := list }}
{{- with .Values.gate.conditionType }}
{{- $gates = append $gates . }}
{{- end }}
{{- range $id, $check := .Values.checks }}
{{- with $check.gate }}
{{- $gates = append $gates . }}
{{- end }}
{{- end }}
{{- $gates | uniq | sortAlpha | join " " }}
{{- end }}
{{- end }}

{{/* The Pod's readinessGates list items (nothing when there is no condition type to declare). */}}
{{- define "readiness-gate-sidecar.readinessGates" -}}
{{- $items := list }}
{{- range splitList " " (include "readiness-gate-sidecar.conditionTypes" .) }}
{{- if . }}
{{- $items = append $items (dict "conditionType" .) }}
{{- end }}
{{- end }}
{{- with $items }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- define "readiness-gate-sidecar.container" -}}
{{- include "readiness-gate-sidecar.containerItem" (dict "context" . "native" false) | trim }}
{{- end }}

{{- define "readiness-gate-sidecar.nativeSidecar" -}}
{{- include "readiness-gate-sidecar.containerItem" (dict "context" . "native" true) | trim }}
{{- end }}

{{/* The sidecar container as a list item; .native adds restartPolicy: Always. */}}
{{- define "readiness-gate-sidecar.containerItem" -}}
{{- $ := .context }}
{{- $v := $.Values }}
{{- $c := $v.container }}
{{- if not $v.checks }}
{{- fail "readiness-gate-sidecar: no checks configured: set checks.<ID>.kind and its parameters (see values.yaml)" }}
{{- end }}
- name: {{ $c.name }}
  image: {{ include "readiness-gate-sidecar.image" $ | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  ports:
    - name: gate-http
      containerPort: {{ $c.port }}
      protocol: TCP
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: POD_UID
      valueFrom:
        fieldRef:
          fieldPath: metadata.uid
    - name: GATE_HTTP_ADDRESS
      value: {{ printf ":%v" $c.port | quote }}
    - name: GATE_CONTAINER_NAME
      value: {{ $c.name | quote }}
    {{- range $key := keys $v.gate | sortAlpha }}
    {{- $value := get $v.gate $key }}
    {{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
    - name: GATE_{{ $key | snakecase | upper }}
      value: {{ toString $value | quote }}
    {{- end }}
    {{- end }}
    {{- range $id := keys $v.checks | sortAlpha }}
    {{- $check := get $v.checks $id }}
    {{- range $param := keys $check | sortAlpha }}
    {{- $value := get $check $param }}
    {{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
    - name: CHECK_{{ $id }}_{{ $param | snakecase | upper }}
      value: {{ toString $value | quote }}
    {{- end }}
    {{- end }}
    {{- end }}
    {{- with $c.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  readinessProbe:
    httpGet:
      path: {{ ternary "/readyz" "/gate" (and $v.gate.write true) }}
      port: {{ $c.port }}
    {{- with $c.readinessProbe }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $c.port }}
    {{- with $c.livenessProbe }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $c.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.volumeMounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
