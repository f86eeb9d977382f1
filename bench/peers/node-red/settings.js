// Node-RED settings for bench/peers.py: headless (no editor, no HTTP server), loopback only,
// nothing fetched from outside. Run as
//   node .../node-red/red.js --settings settings.js --userDir bench/peers/.cache/node-red flows.json
// with GPUFLEET_PEERS_MQTT_PORT, GPUFLEET_PEERS_INFLUX_PORT and GPUFLEET_PEERS_DB set: flows.json
// takes its broker port, influxd port and database from them (Node-RED replaces a property
// that is exactly "${NAME}" with that environment variable when it loads the flow).
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: Number(process.env.GPUFLEET_PEERS_UI_PORT || 0),
    // Both roots off: red.js then starts no HTTP server at all.
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    flowFilePretty: false,
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },
    externalModules: {
        autoInstall: false,
        palette: { allowInstall: false, allowUpdate: false, allowUpload: false },
        modules: { allowInstall: false },
    },
    logging: { console: { level: "info", metrics: false, audit: false } },
    functionExternalModules: false,
    exportGlobalContextKeys: false,
};
