// The results site's only script: a run's sample is fetched when its <details class="sample"> is first opened
// (data-sample-url: the run's /runs/<id>/sample.json), and shown transposed, one line per column.
"use strict";
document.addEventListener("toggle", (event) => {
  const details = event.target;
  if (!(details instanceof HTMLDetailsElement) || !details.classList.contains("sample") || !details.open) return;
  if (details.dataset.loaded || !details.dataset.sampleUrl) return;
  details.dataset.loaded = "1";
  const table = details.querySelector("table");
  fetch(details.dataset.sampleUrl)
    .then((response) => (response.ok ? response.json() : Promise.reject(new Error(response.statusText))))
    .then((rows) => {
      const [header, ...records] = rows;
      for (const [column, name] of (header || []).entries()) {
        const tr = table.insertRow();
        const th = document.createElement("th");
        th.textContent = name;
        tr.appendChild(th);
        for (const record of records) tr.insertCell().textContent = record[column] ?? "";
      }
    })
    .catch((error) => {
      table.insertRow().insertCell().textContent = `No sample: ${error.message}`;
    });
}, true);
