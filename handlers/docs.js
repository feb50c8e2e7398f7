// Swagger UI (swagger-ui-py's copy of swagger-ui-dist, served from /docs/)
// on this server's /openapi.json. Nothing is fetched from anywhere else: no
// validator badge, no remote config.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  docExpansion: "list",
  defaultModelsExpandDepth: 1,
  displayOperationId: true,
  showExtensions: false,
  validatorUrl: null,
  queryConfigEnabled: false,
});
