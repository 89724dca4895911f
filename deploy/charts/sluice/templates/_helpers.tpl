{{/* The labels every object of the release carries. */}}
{{- define "sluice.labels" -}}
app.kubernetes.io/part-of: sluice
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* image returns registry/name:tag for one of the image values. Call with (list $ .Values.xImage). */}}
{{- define "sluice.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $registry := $img.registry | default $root.Values.image.registry -}}
{{- $tag := $img.tag | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" $registry $img.name $tag -}}
{{- end }}

{{/* The admin probes of a control-plane container on its admin port. */}}
{{- define "sluice.probes" -}}
livenessProbe:
  httpGet:
    path: /live
    port: admin
  initialDelaySeconds: 5
readinessProbe:
  httpGet:
    path: /ready
    port: admin
  periodSeconds: 2
  failureThreshold: 3
{{- end }}

{{/* The security context of every control-plane container: no privileges at all. */}}
{{- define "sluice.restricted" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 2103
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{/* The flags every sluice-controller service takes. */}}
{{- define "sluice.commonArgs" -}}
- --log-level={{ .Values.logLevel }}
- --log-format={{ .Values.logFormat }}
{{- end }}

{{/* The pod annotations of the control plane: scraped by Prometheus, never injected. */}}
{{- define "sluice.podAnnotations" -}}
sluice.io/inject: disabled
prometheus.io/scrape: "true"
prometheus.io/port: {{ . | quote }}
{{- end }}

{{/*
spread spreads the replicas of a control-plane component over nodes (preferred, so that
a one-node cluster still runs them all) when there is more than one. Call with
(list replicas "component").
*/}}
{{- define "sluice.spread" -}}
{{- $replicas := index . 0 -}}
{{- $component := index . 1 -}}
{{- if gt (int $replicas) 1 }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            sluice.io/control-plane-component: {{ $component }}
{{- end }}
{{- end }}
