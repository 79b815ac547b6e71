(function(){
var box=document.getElementById('filter-box');if(!box)return;box.hidden=false;
var input=document.getElementById('filter'),only=document.getElementById('flagged');
var sort=document.getElementById('sort'),count=document.getElementById('filter-count');
var rows=Array.prototype.slice.call(document.querySelectorAll('tr.row'));
var body=rows.length?rows[0].parentNode:null;
var text=rows.map(function(r){return r.textContent.toLowerCase();});
function apply(){var t=input.value.trim().toLowerCase(),n=0;
rows.forEach(function(r,i){var ok=(!t||text[i].indexOf(t)>=0)&&
(!only.checked||r.hasAttribute('data-attention'));
r.hidden=!ok;if(ok)n++;});
count.textContent=n+' of '+rows.length+' rows';}
function num(r,k){var v=r.getAttribute(k);return v===null||v===''?null:parseFloat(v);}
function order(){if(!body)return;var how=sort.value;
var sorted=rows.slice().sort(function(a,b){var d=0;
if(how==='asc'||how==='desc'){var x=num(a,'data-score'),y=num(b,'data-score');
if(x===null&&y!==null)return 1;if(y===null&&x!==null)return -1;
if(x!==null&&y!==null)d=how==='asc'?x-y:y-x;}
else if(how==='id'){d=a.getAttribute('data-id').localeCompare(b.getAttribute('data-id'),
undefined,{numeric:true});}
return d||num(a,'data-order')-num(b,'data-order');});
sorted.forEach(function(r){body.appendChild(r);});}
input.addEventListener('input',apply);only.addEventListener('change',apply);
sort.addEventListener('change',order);order();apply();
})();
